"""benchmarks/scale.py at a small size: a store of copied real games, planned and read exactly once.

The benchmark's epoch check is itself checked: it must flag a repeated batch, a missing one and an
example outside its game's targets.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from melee_encode import open_store

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import scale  # noqa: E402

GAMES = 300
CHUNK_FRAMES = 8192  # not the default, so that --chunk-frames is read


@pytest.fixture(scope="module")
def figures_and_store(tmp_path_factory) -> tuple[dict, str]:
    work = tmp_path_factory.mktemp("scale")
    command = [
        sys.executable,
        "benchmarks/scale.py",
        "--games",
        str(GAMES),
        "--dir",
        str(work),
        "--keep",
        "--chunk-frames",
        str(CHUNK_FRAMES),
        "--loader-batches",
        "5",
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), str(work / f"scale-{GAMES}-chunks{CHUNK_FRAMES}.zarr")


@pytest.mark.slow
def test_the_benchmark_builds_plans_and_reads_every_example_once(figures_and_store):
    figures, store = figures_and_store
    assert figures["chunk_frames"] == open_store(store).chunk_frames == CHUNK_FRAMES
    assert figures["built_games"] == GAMES and figures["built_frames"] == figures["frames"] > 0
    assert figures["epoch_split"] == "train" and figures["epoch_exactly_once"] is True
    assert figures["epoch_examples"] == figures["epoch_expected_examples"] == figures["plan_train_examples"]
    assert figures["epoch_duplicates"] == figures["epoch_outside_targets"] == 0
    assert figures["loader_examples"] == 5 * 4096
    assert 1 <= figures["distinct_games_per_batch"] <= figures["uniform_distinct_games_per_batch"] <= figures["train_games"]
    for name in ("build_frames_per_s", "bytes_per_frame", "info_s", "open_s", "plan_s", "loader_samples_per_s", "loader_peak_rss_mb"):
        assert figures[name] > 0, name


@pytest.mark.slow
def test_the_epoch_check_catches_repeats_gaps_and_strays(figures_and_store):
    _, store = figures_and_store
    source = scale.source_for(store)
    index = scale.GameIndex(source)
    batches = [batch["example_id"].numpy() for batch in source.loader("val", 0, num_workers=0)]
    assert len(batches) > 2

    def check(stream) -> scale.EpochCheck:
        counted = scale.EpochCheck(index, source.rows["val"])
        for ids in stream:
            counted.add(ids)
        return counted

    assert check(batches).exactly_once()
    repeated = check([*batches, batches[1][:1]])
    assert repeated.duplicates == 1 and not repeated.exactly_once()
    assert not check(batches[:-1]).exactly_once()
    game = int(source.rows["val"][0])
    first_frame = (int(source.store.games["part"][game]) << 40) | int(source.store.games["offset"][game])  # context, not a target
    stray = check([*batches[:-1], np.concatenate([batches[-1][:-1], [first_frame]])])
    assert stray.outside == 1 and not stray.exactly_once()
