"""The benchmark scripts still run, at a tiny size: their figures are measured elsewhere, not here."""

import json
import os
import subprocess
import sys

import pytest

from melee_model.config import load_config

from conftest import ROOT, replay


def benchmark(name: str, *args: str) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / name), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_encode_throughput_measures_the_encode_against_the_bare_parse():
    replays = [replay("peppi/game.slp"), replay("slippi-js/incomplete.slp"), replay("peppi/items.slp")]  # incomplete: salvaged
    figures = benchmark("encode_throughput.py", *replays, "--repeat", "2", "--trials", "1")
    assert figures["frames"] > 0 and figures["frames_per_s"] > 0 and figures["peppi_frames_per_s"] > 0
    assert figures["ratio_to_peppi"] == figures["frames_per_s"] / figures["peppi_frames_per_s"]  # one trial: its own ratio
    assert 0 < figures["bytes_per_frame"] < figures["store_bytes_per_frame"]
    assert figures["speedup_workers"] > 0 and figures["peppi_speedup_workers"] > 0


@pytest.mark.slow
def test_loader_throughput_reports_mixing_and_both_objectives_and_compares_two_stores(shared_store, replays_dir, tmp_path):
    from melee_encode import EncodeOptions, encode

    default_chunks = str(tmp_path / "default-chunks.zarr")
    encode([replays_dir], default_chunks, EncodeOptions(progress=False))
    figures = benchmark(
        "loader_throughput.py",
        "--store",
        shared_store,
        "--compare-store",
        default_chunks,
        "--compare-seq-piece-frames",
        "32768",
        "--compare-seq-pieces-per-group",
        "2",
        "--trials",
        "2",
        "--min-examples",
        "20000",
        "--batch-size",
        "512",
        "--seq-batch-size",
        "16",
    )
    assert figures["samples_per_s"] > 0 and figures["chunk_hands"]["samples_per_s"] > 0 and figures["targets_per_s"]["sequence"] > 0
    assert 1 <= figures["chunk_groups"]["distinct_games_per_batch"] < figures["distinct_games_per_batch"]  # whole chunks mix less
    sequence = figures["sequence"]
    assert all(1 <= sequence[key] <= 16 for key in ("distinct_games_per_batch", "uniform_distinct_games_per_batch"))  # 16 windows a batch
    yaml = load_config(ROOT / "experiments" / "mamba2-v3-seq.yaml").data
    assert (sequence["piece_frames"], sequence["pieces_per_group"]) == (yaml.piece_frames, yaml.pieces_per_group)
    compare = figures["compare"]
    assert compare["store"] == default_chunks and compare["chunk_frames"] == 32768  # the encoder's default
    assert (compare["sequence"]["piece_frames"], compare["sequence"]["pieces_per_group"]) == (32768, 2)
    for ratio in (compare["samples_per_s_ratio"], compare["sequence"]["targets_per_s_ratio"]):
        assert len(ratio) == 3 and 0 < ratio[1] <= ratio[0] <= ratio[2]  # median of two trials' ratios, within their range
    assert 1 <= compare["sequence"]["distinct_games_per_batch"] <= 16 and compare["distinct_games_per_batch"] >= 1


def test_loader_throughput_refuses_a_compare_store_that_is_not_one_before_any_trial(shared_store, tmp_path):
    missing = tmp_path / "none.zarr"
    command = [sys.executable, str(ROOT / "benchmarks" / "loader_throughput.py"), "--store", shared_store, "--compare-store", str(missing)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == f"--compare-store: no store at {missing}"


@pytest.mark.slow
def test_distributed_throughput_reads_its_loader_store_from_s3_in_the_chunks_asked_for(replays_dir):
    short = ["--repeat", "1", "--loader-repeat", "1", "--trials", "1", "--batch-size", "512", "--chunk-frames", "4096"]
    figures = benchmark("distributed_throughput.py", "--replays", replays_dir, *short)
    store = figures["loader_store"]
    assert store["chunk_frames"] == 4096 and store["chunks"] >= store["frames"] / 4096
    assert all(figures[key] > 0 for key in ("dask_frames_per_s", "pool_frames_per_s", "s3_examples_per_s", "disk_examples_per_s"))
    assert figures["s3_to_disk"] == pytest.approx(figures["s3_examples_per_s"] / figures["disk_examples_per_s"])  # one trial


@pytest.mark.slow
def test_mixing_quality_trains_and_scores_every_grouping(shared_store):
    short = ["--steps", "3", "--batch-size", "64", "--val-batches", "8"]
    figures = benchmark("mixing_quality.py", "--store", shared_store, "--val-store", shared_store, *short)
    groupings = ("mixed", "chunk_hands", "large_pieces", "one_group", "chunk_groups")
    assert set(figures) >= {*groupings, "mixed_over_one_group"}
    assert all(figures[name]["val_loss"] > 0 and figures[name]["val_examples"] == 8 * 64 for name in groupings)


@pytest.mark.slow
def test_mixing_quality_of_sequence_windows_counts_the_games_of_a_batch(shared_store):
    short = ["--objective", "sequence", "--steps", "2", "--batch-size", "8", "--seq-len", "32", "--val-batches", "4"]
    figures = benchmark("mixing_quality.py", "--store", shared_store, "--val-store", shared_store, *short)
    groupings = ("mixed", "narrow", "small_pieces", "one_group")
    assert set(figures) >= {*groupings, "mixed_over_one_group"} and figures["objective"] == "sequence"
    assert all(figures[name]["steps"] == 2 for name in groupings)  # --steps, short of an epoch
    examples = 4 * 8 * 32  # 4 batches of the card's K-frame examples, 8 windows x 32 positions each
    assert all(figures[name]["val_loss"] > 0 and figures[name]["val_examples"] == examples for name in groupings)
    games = {name: figures[name]["distinct_games_per_batch"] for name in groupings}
    assert all(1 <= n <= 8 for n in games.values())
    assert games["narrow"] < games["one_group"]  # two pieces of 65,536 frames a group hold fewer games
    uniform = {figures[name]["uniform_distinct_games_per_batch"] for name in groupings}
    assert len(uniform) == 1 and games["one_group"] <= next(iter(uniform)) + 1  # the same windows; a full shuffle is uniform
