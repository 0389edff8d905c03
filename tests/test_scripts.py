"""The entry points on bad input: one line `<script>: error: <reason>`, exit code 2, never a traceback."""

import os
import subprocess
import sys

import pytest
import torch

from melee_encode import EncodeOptions, EncodingConfig, encode
from melee_model.checkpoint import save_checkpoint
from melee_model.config import load_config

from conftest import ROOT, replay

TINY = str(ROOT / "experiments" / "tiny.yaml")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, *([str(ROOT / "scripts" / script)] if script.endswith(".py") else ["-m", script]), *args]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def assert_one_line_error(done: subprocess.CompletedProcess, prog: str, *needles: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr[-2000:]
    assert all(needle in lines[0] for needle in needles), lines[0]


@pytest.fixture(scope="module")
def foreign_checkpoint(tmp_path_factory) -> str:
    """A checkpoint of the tiny config whose store was another one (another selection of games)."""
    output = tmp_path_factory.mktemp("foreign")
    config = load_config(TINY)
    store = {"path": "elsewhere.zarr", "encoding": config.encoding.to_dict(), "games": 3, "selection": "0123456789abcdef"}
    state = {"config": config.to_dict(), "progress": {"step": 1, "epoch": 0}, "store": store, "world_size": 1, "wandb_id": None}
    weights = {"w": torch.zeros(1)}
    save_checkpoint(output, 1, model=weights, optimizer={}, ranks=[{}], state=state, links=("latest",))
    return str(output / "latest")


@pytest.fixture(scope="module")
def projectile_store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("other") / "projectiles.zarr")
    encode([replay("peppi/v3.13.slp")], path, EncodeOptions(config=EncodingConfig(projectiles=True), progress=False))
    return path


@pytest.mark.parametrize("script", ["train.py", "plan_run.py"])
def test_a_missing_store(script, tmp_path):
    assert_one_line_error(run(script, "--config", TINY, "--store", "/no/such/store"), script, "no store at /no/such/store")


@pytest.mark.parametrize("script", ["train.py", "plan_run.py"])
def test_a_missing_or_misspelled_config(script, shared_store):
    assert_one_line_error(run(script, "--config", "/no/such.yaml", "--store", shared_store), script, "cannot read config /no/such.yaml")
    assert_one_line_error(run(script, "--config", TINY, "--store", shared_store, "--set", "train.lrate=1"), script, "unknown config key")


def test_a_store_of_another_encoding(projectile_store):
    assert_one_line_error(
        run("plan_run.py", "--config", TINY, "--store", projectile_store), "plan_run.py", "projectiles: store has True, config has False"
    )


def test_resuming_a_checkpoint_of_another_store(shared_store, foreign_checkpoint, tmp_path):
    done = run(
        "train.py",
        "--config",
        TINY,
        "--store",
        shared_store,
        "--output-dir",
        str(tmp_path),
        "--resume",
        foreign_checkpoint,
        "--no-progress",
    )
    assert_one_line_error(done, "train.py", "another store or selection")


@pytest.mark.slow
def test_evaluate_on_a_missing_store_or_checkpoint_or_another_encoding(shared_store, foreign_checkpoint, projectile_store):
    assert_one_line_error(run("evaluate.py", "--checkpoint", "/no/such/run", "--store", shared_store), "evaluate.py", "not a checkpoint")
    assert_one_line_error(run("evaluate.py", "--checkpoint", foreign_checkpoint, "--store", "/no/such/store"), "evaluate.py", "no store at")
    assert_one_line_error(run("evaluate.py", "--checkpoint", foreign_checkpoint, "--store", projectile_store), "evaluate.py", "projectiles")


def test_bad_storage_options_and_encode_inputs(tmp_path):
    assert_one_line_error(
        run("plan_run.py", "--config", TINY, "--store", "x", "--storage-option", "novalue"), "plan_run.py", "not key=value"
    )
    assert_one_line_error(
        run("melee_encode.cli", "encode", "/no/such/replays", "-o", str(tmp_path / "s.zarr"), "--quiet"), "melee-encode", "no such file"
    )
