"""The encode pipeline: inputs and archives, workers, dedupe, kill -9 and resume, the CLI."""

import gzip
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import zarr

from melee_encode import EncodeOptions, encode, open_store
from melee_encode.cli import main as cli_main
from melee_encode.writer import StoreWriter

from conftest import SHARED_GAMES, SHARED_SKIPPED, SOME, games_by_hash, replay, temp_replays, zip_of_gzipped

ENCODE = [sys.executable, "-m", "melee_encode.cli", "encode"]


def test_archives_and_gzip_give_the_same_games(tmp_path):
    zip_of_gzipped(tmp_path / "dump.zip", SOME)
    with tarfile.open(tmp_path / "dump.tar.gz", "w:gz", compresslevel=1) as archive:
        for name in SOME:
            archive.add(replay(name), arcname=name)
    single = tmp_path / "one.slp.gz"
    single.write_bytes(gzip.compress(open(replay(SOME[0]), "rb").read()))
    before = temp_replays()

    plain = str(tmp_path / "plain.zarr")
    encode([replay(n) for n in SOME], plain, EncodeOptions(progress=False))
    expected = games_by_hash(plain)
    assert len(expected) == 3
    for source in ("dump.zip", "dump.tar.gz"):
        path = str(tmp_path / f"{source}.zarr")
        encode([str(tmp_path / source)], path, EncodeOptions(progress=False))
        games = games_by_hash(path)
        assert games.keys() == expected.keys(), source
        for digest, game in games.items():
            assert np.array_equal(game.floats, expected[digest].floats)
        skipped = open_store(path).skipped
        assert sorted(s.reason.split(":")[0] for s in skipped) == ["not a 1v1 game", "unreadable replay"]
        assert all("::" in s.source for s in skipped)
    path = str(tmp_path / "single.zarr")
    encode([str(single)], path, EncodeOptions(progress=False))
    assert list(games_by_hash(path)) == [open_store(plain).games["hash"][0]]
    assert temp_replays() == before  # temporary copies for peppi are always removed


def test_seven_zip_archives(tmp_path):
    py7zr = pytest.importorskip("py7zr")
    with py7zr.SevenZipFile(tmp_path / "dump.7z", "w") as archive:
        for name in SOME[:2]:
            archive.write(replay(name), arcname=name)
    path = str(tmp_path / "7z.zarr")
    encode([str(tmp_path / "dump.7z")], path, EncodeOptions(progress=False))
    assert len(open_store(path)) == 2


def test_two_workers_encode_the_same_games_as_one(replays_dir, shared_store, tmp_path):
    path = str(tmp_path / "pool.zarr")
    encode([replays_dir], path, EncodeOptions(progress=False, workers=2, part_frames=20_000, chunk_frames=4096))
    store = open_store(path)
    assert len(store.parts) > 3  # several parts committed while the encode ran
    pooled, single = games_by_hash(path), games_by_hash(shared_store)
    assert pooled.keys() == single.keys()
    for digest, game in single.items():
        assert np.array_equal(pooled[digest].floats, game.floats) and np.array_equal(pooled[digest].ints, game.ints)
    assert len(store.skipped) == SHARED_SKIPPED


def test_same_content_twice_is_one_game(tmp_path):
    path = str(tmp_path / "dup.zarr")
    gz = tmp_path / "copy.slp.gz"
    gz.write_bytes(gzip.compress(open(replay("peppi/v2.0.slp"), "rb").read()))
    summary = encode([replay("peppi/v2.0.slp"), str(gz)], path, EncodeOptions(progress=False))
    assert summary.games == 1
    assert [s.reason for s in summary.skipped] == [f"duplicate: same content as {replay('peppi/v2.0.slp')}"]
    again = encode([str(gz)], path, EncodeOptions(progress=False))
    assert (again.games, again.already_present) == (0, 1)


def _committed_games(path) -> int:
    try:
        return zarr.open_group(path, mode="r").attrs["melee_encode"]["games"]
    except Exception:  # not created yet
        return -1


@pytest.mark.parametrize("kill_after_games", [0, 8, pytest.param(30, marks=pytest.mark.slow)])
def test_kill_9_then_resume_loses_and_duplicates_nothing(replays_dir, shared_store, tmp_path, kill_after_games):
    path = str(tmp_path / "killed.zarr")
    command = ENCODE + [replays_dir, "-o", path, "--part-frames", "2000", "--chunk-frames", "1024", "--quiet"]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 60
    while _committed_games(path) < kill_after_games and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    interrupted = open_store(path)  # readable right after the kill
    committed = interrupted.games["hash"].tolist()
    assert kill_after_games <= len(committed) < SHARED_GAMES and len(committed) == len(set(committed))
    for i in range(len(interrupted)):
        interrupted.game(i)  # every committed game reads back whole

    subprocess.run(command, check=True)
    resumed = open_store(path)
    assert len(resumed) == SHARED_GAMES
    assert sorted(resumed.games["hash"].tolist()) == sorted(open_store(shared_store).games["hash"].tolist())
    assert len(resumed.skipped) == SHARED_SKIPPED
    assert set(committed) <= set(resumed.games["hash"].tolist())
    parts_on_disk = {int(name) for name in os.listdir(os.path.join(path, "parts")) if name.isdigit()}
    assert parts_on_disk == set(resumed.parts)  # no orphan part left behind


def test_cli_refuses_a_second_writer(tmp_path):
    path = str(tmp_path / "busy.zarr")
    with StoreWriter(path):
        result = subprocess.run(ENCODE + [replay("peppi/v3.18.slp"), "-o", path, "--quiet"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "refusing a second writer" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_encode_and_info_json(replays_dir, tmp_path, capsys):
    path = str(tmp_path / "cli.zarr")
    assert cli_main(["encode", replays_dir, "-o", path, "--workers", "2", "--end-method", "game", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "encoded 5 games" in out and "skipped 54 replays" in out
    assert cli_main(["info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"games", "frames", "bytes_on_disk", "bytes_per_frame", "skipped", "encoding"} <= info.keys()
    assert info["games"] == 5 and info["frames"] == 5023 + 9519 + 7375 + 10739 + 148
    assert info["bytes_per_frame"] == pytest.approx(info["bytes_on_disk"] / info["frames"])
    assert {"source", "reason"} <= info["skipped"][0].keys()
    assert cli_main(["info", path, "--games", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {"source", "hash", "frames", "rollback_frames_dropped", "ports", "characters", "stage", "end_method", "slippi_version"}
    assert len(rows) == 5 and all(keys <= row.keys() for row in rows)
    assert cli_main(["info", path]) == 0
    assert "bytes/frame" in capsys.readouterr().out


def test_cli_names_resolve_through_the_tables(replays_dir, tmp_path, capsys):
    path = str(tmp_path / "fd.zarr")
    assert cli_main(["encode", replays_dir, "-o", path, "--stage", "fd", "--character", "fox", "--quiet"]) == 0
    assert set(open_store(path).games["stage"].tolist()) == {32}
    assert cli_main(["encode", replays_dir, "-o", str(tmp_path / "x.zarr"), "--stage", "fdd"]) == 2
    assert "unknown stage 'fdd'" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "melee-encode")
    result = subprocess.run([script, "info", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--games" in result.stdout
