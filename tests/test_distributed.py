"""Encoding on a real Dask cluster (a scheduler and two worker processes on loopback) into a bucket of
a real S3-compatible server: equal to a local encode, resumable, and unharmed by a worker's death."""

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest
from test_remote import assert_same_games, parts_in_bucket, skip_reasons

from melee_encode import EncodeOptions, encode, open_store
from melee_encode.cli import main as cli_main

from conftest import SHARED_GAMES, SHARED_SKIPPED, replay
from servers import local_cluster

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")


@pytest.fixture(scope="module")
def client(s3):
    """A local Dask cluster, started after the S3 server so that the workers inherit its credentials."""
    with local_cluster() as client:
        yield client


def dask_options(s3, client, **overrides) -> EncodeOptions:
    return EncodeOptions(**{"progress": False, "storage_options": s3.storage_options, "dask": client, **overrides})


@pytest.mark.slow
def test_encode_on_the_cluster_into_a_bucket_equals_a_local_encode_and_resumes(s3, client, replays_dir, shared_store):
    url = f"s3://{s3.new_bucket()}/ranked.zarr"
    summary = encode([replays_dir], url, dask_options(s3, client, dask_batch=16))
    assert (summary.games, len(summary.skipped), summary.store_games) == (SHARED_GAMES, SHARED_SKIPPED, SHARED_GAMES)
    assert_same_games(url, s3.storage_options, shared_store)
    assert skip_reasons(url, s3.storage_options) == skip_reasons(shared_store)
    assert parts_in_bucket(s3, url) == set(open_store(url, s3.storage_options).parts)

    again = encode([replays_dir], url, dask_options(s3, client, dask_batch=16))
    assert (again.games, again.already_present, again.store_games) == (0, SHARED_GAMES + SHARED_SKIPPED, SHARED_GAMES)


@pytest.mark.slow
def test_killing_a_worker_mid_encode_loses_and_duplicates_nothing(s3, client, replays_dir, shared_store):
    url = f"s3://{s3.new_bucket()}/killed.zarr"
    pids = client.run(os.getpid)  # worker address -> pid
    outcome = {}
    encoding = threading.Thread(target=lambda: outcome.update(summary=encode([replays_dir], url, dask_options(s3, client, dask_batch=5))))
    encoding.start()
    victim = _wait_for_a_busy_worker(client, url, s3, encoding)
    os.kill(pids[victim], signal.SIGKILL)
    encoding.join(timeout=120)
    assert "summary" in outcome, "the encode did not complete after a worker was killed"

    summary = outcome["summary"]
    store = open_store(url, s3.storage_options)
    assert (summary.games, store.n_games, len(store.skipped)) == (SHARED_GAMES, SHARED_GAMES, SHARED_SKIPPED)
    assert len(set(store.games["hash"])) == SHARED_GAMES
    assert_same_games(url, s3.storage_options, shared_store)
    assert parts_in_bucket(s3, url) == set(store.parts)  # no orphan part of the killed attempt
    assert pids[victim] not in client.run(os.getpid).values()  # the worker did die (its nanny restarted it)


def _wait_for_a_busy_worker(client, url, s3, encoding: threading.Thread) -> str:
    """The address of a worker running an encode task, once the store has committed a first part."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and encoding.is_alive():
        if _committed_parts(url, s3):
            busy = [worker for worker, keys in client.processing().items() if any(str(k).startswith("melee-encode-") for k in keys)]
            if busy:
                return busy[0]
        time.sleep(0.02)
    pytest.fail("no encode task was running after the first commit")


def _committed_parts(url, s3) -> int:
    try:
        return len(open_store(url, s3.storage_options).parts)
    except Exception:  # not created yet
        return 0


def test_max_games_on_the_cluster(s3, client, replays_dir, shared_store, tmp_path):
    path = str(tmp_path / "first.zarr")  # a local store: the workers share this machine's disk
    in_order = open_store(shared_store).games["source"].tolist()
    encode([replays_dir], path, dask_options(s3, client, max_games=5, dask_batch=4))
    assert sorted(open_store(path).games["source"].tolist()) == sorted(in_order[:5])


def test_cli_encodes_through_a_scheduler_address(s3, client, tmp_path, capsys):
    url = f"s3://{s3.new_bucket()}/cli.zarr"
    inputs = [replay("peppi/ics2.slp"), replay("peppi/v2.0.slp"), replay("peppi/corrupt.slp")]
    endpoint = f"endpoint_url={s3.endpoint_url}"
    assert (
        cli_main(
            ["encode", *inputs, "-o", url, "--dask", client.scheduler.address, "--dask-batch", "2", "--storage-option", endpoint, "--quiet"]
        )
        == 0
    )
    assert "encoded 2 games" in capsys.readouterr().out
    assert len(open_store(url, s3.storage_options)) == 2

    assert cli_main(["encode", *inputs, "-o", url, "--dask", client.scheduler.address, "--workers", "2"]) == 2
    assert "--workers and --dask exclude each other" in capsys.readouterr().err
    with tarfile.open(tmp_path / "dump.tar", "w") as archive:
        archive.add(inputs[0], arcname="ics2.slp")
    assert cli_main(["encode", str(tmp_path / "dump.tar"), "-o", str(tmp_path / "t.zarr"), "--dask", client.scheduler.address]) == 2
    err = capsys.readouterr().err
    assert "tar and 7z archives can only be read in order" in err and len(err.strip().splitlines()) == 1


def test_without_dask_nothing_of_dask_is_imported(tmp_path):
    script = f"""
import sys
from melee_encode import EncodeOptions, encode
from melee_encode.cli import main
encode([{replay("peppi/v3.18.slp")!r}], {str(tmp_path / "s.zarr")!r}, EncodeOptions(progress=False, workers=2))
main(["info", {str(tmp_path / "s.zarr")!r}])
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("dask", "distributed", "melee_encode.distributed"))
print("loaded:", loaded)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "loaded: []" in result.stdout
