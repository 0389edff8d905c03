"""The benchmark scripts still run, at a tiny size: their figures are measured elsewhere, not here."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def benchmark(name: str, *args: str) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / name), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_loader_throughput_reports_mixing_and_both_objectives(shared_store):
    figures = benchmark(
        "loader_throughput.py",
        "--store",
        shared_store,
        "--trials",
        "1",
        "--min-examples",
        "20000",
        "--batch-size",
        "512",
        "--seq-batch-size",
        "16",
    )
    assert figures["samples_per_s"] > 0 and figures["chunk_hands"]["samples_per_s"] > 0 and figures["targets_per_s"]["sequence"] > 0
    assert 1 <= figures["chunk_groups"]["distinct_games_per_batch"] < figures["distinct_games_per_batch"]  # whole chunks mix less


@pytest.mark.slow
def test_mixing_quality_trains_and_scores_every_grouping(shared_store):
    figures = benchmark("mixing_quality.py", "--store", shared_store, "--val-store", shared_store, "--steps", "3", "--batch-size", "64")
    groupings = ("mixed", "chunk_hands", "large_pieces", "one_group", "chunk_groups")
    assert set(figures) >= {*groupings, "mixed_over_one_group"}
    assert all(figures[name]["val_loss"] > 0 and figures[name]["val_examples"] > 0 for name in groupings)
