"""Run plans on a real store: exact counts from the store and the data pipeline, parameters, time and cost."""

import json
import math
import subprocess
import sys

import pytest
import yaml

from melee_encode import open_store
from melee_model.config import ExperimentConfig, from_dict
from melee_model.examples import ExampleSource
from melee_model.layout import layout_for
from melee_model.plan import plan_markdown, plan_run, read_step_ms

from conftest import ROOT

# The run card's model section (d_model 384, n_layers 4, d_state 64, headdim 64, K 10) on the v3 encoding.
RUN_CARD = {
    "name": "run-card",
    "encoding": {"state_flags": True, "hitstun": True, "state_age_as_embed": True, "projectiles": False},
    "data": {"context_len": 10, "end_methods": ["game"], "batch_size": 4096, "num_workers": 4},
    "model": {"arch": "mamba2", "d_model": 384, "n_layers": 4, "d_state": 64, "headdim": 64, "chunk_size": 10},
    "train": {"epochs": 2, "log_interval": 1000},
}
# Every shared game, small batches, so the counts are worth checking.
SMALL = {
    "name": "small",
    "data": {"require_fields": "none", "batch_size": 512, "pieces_per_group": 3, "piece_frames": 2048, "num_workers": 0},
    "train": {"epochs": 3},
}
REQUIRED_KEYS = {
    "parameters", "float_dims", "int_dims", "games", "frames", "train_examples", "val_examples", "batches_per_epoch",
    "train_games", "val_games", "epochs", "gpus", "batch_size", "total_updates",
}  # fmt: skip
TIMING_KEYS = {"step_ms", "epoch_hours", "total_hours", "cost_usd"}


def config(values: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, values)


def test_plan_script_json_for_the_run_cards_config(shared_store, tmp_path):
    path = tmp_path / "run-card.yaml"
    path.write_text(yaml.safe_dump(RUN_CARD))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"step_ms": 230.0, "examples_per_s": 17808}))
    command = [
        sys.executable,
        str(ROOT / "scripts" / "plan_run.py"),
        "--config",
        str(path),
        "--store",
        shared_store,
        "--gpus",
        "2",
        "--step-json",
        str(bench),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert REQUIRED_KEYS | TIMING_KEYS <= set(plan)
    store = open_store(shared_store)
    assert plan["parameters"] == 4_345_444
    assert (plan["games"], plan["frames"]) == (store.n_games, store.n_frames)
    assert (plan["float_dims"], plan["int_dims"], plan["gpus"], plan["batch_size"], plan["epochs"]) == (138, 17, 2, 4096, 2)
    assert plan["step_ms"] == 230.0
    # The reference's RAM: every frame as float32 + int64, 688 bytes.
    assert plan["reference_ram_bytes"] == store.n_frames * 688


def test_counts_match_the_data_pipeline(shared_store):
    small = config(SMALL)
    plan = plan_run(small, shared_store)
    store = open_store(shared_store)
    source = ExampleSource(shared_store, layout_for(small, store.schema), small.data)
    assert (plan["train_games"], plan["val_games"]) == (len(source.rows["train"]), len(source.rows["val"]))
    assert plan["train_games"] + plan["val_games"] == store.n_games  # no filter: every game
    assert (plan["train_examples"], plan["val_examples"]) == (source.example_count("train"), source.example_count("val"))
    sizes = [len(batch["example_id"]) for batch in source.loader("train", 0)]
    assert sum(sizes) == plan["train_examples"] and len(sizes) == plan["batches_per_epoch"]
    assert plan["total_updates"] == 3 * plan["batches_per_epoch"]
    assert plan["frames"] == plan["selected_frames"] == store.n_frames


@pytest.mark.parametrize("gpus", [1, 2, 3])
def test_batches_per_epoch_per_gpu(shared_store, gpus):
    plan = plan_run(config(SMALL), shared_store, gpus=gpus)
    assert abs(plan["batches_per_epoch"] - math.ceil(plan["train_examples"] / (gpus * 512))) <= 1
    assert plan["batches_per_epoch_total"] == math.ceil(plan["train_examples"] / 512)


def test_time_and_cost_arithmetic(shared_store):
    values = {**SMALL, "train": {"epochs": 2, "grad_accum": 2, "log_interval": 10}}
    plan = plan_run(config(values), shared_store, gpus=2, step_ms=230, gpu_hour_usd=3.0)
    batches = plan["batches_per_epoch"]
    assert plan["updates_per_epoch"] == math.ceil(batches / 2) and plan["total_updates"] == 2 * plan["updates_per_epoch"]
    assert plan["epoch_hours"] == pytest.approx(batches * 0.230 / 3600)
    assert plan["total_hours"] == pytest.approx(2 * plan["epoch_hours"])
    assert plan["cost_usd"] == pytest.approx(plan["total_hours"] * 2 * 3.0)
    assert plan["log_seconds"] == pytest.approx(10 * 2 * 0.230)
    assert not TIMING_KEYS & set(plan_run(config(SMALL), shared_store))  # no step time, no timing


def test_memory_estimate_is_the_loaders(shared_store):
    plan = plan_run(config(SMALL), shared_store)
    assert plan["bytes_per_frame"] == 138 * 4 + 17 * 2
    assert plan["loader_pool_bytes"] == 3 * (2048 + 10) * plan["bytes_per_frame"]  # 3 pieces of 2048 frames and their context
    assert plan["loader_pool_bytes"] < plan["ram_bytes"] < plan["reference_ram_bytes"]


def test_markdown_has_the_run_card_sections(shared_store):
    small = config(SMALL)
    text = plan_markdown(plan_run(small, shared_store, step_ms=100), small)
    for section in ("## Data", "## Model", "## Training", "## Logging & Monitoring", "## Timing & Cost", "## Memory"):
        assert section in text
    assert "| Train examples |" in text and "| Batch time (per GPU) | 100 ms |" in text


def test_step_json_needs_step_ms(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"step_ms": 12.5}))
    bad.write_text(json.dumps({"ms": 12.5}))
    assert read_step_ms(good) == 12.5
    with pytest.raises(ValueError, match="step_ms"):
        read_step_ms(bad)
