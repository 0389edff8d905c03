"""Stores and inputs in a bucket of a real S3-compatible server (moto, on loopback): encoding into it,
remote inputs, the writer lease, and the training data read back from it."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from melee_encode import EncodeOptions, StoreError, encode, open_store
from melee_encode.cli import main as cli_main
from melee_encode.format import SkipRecord
from melee_encode.writer import StoreWriter
from melee_model.batches import batch_to_device
from melee_model.config import DataConfig, LossConfig, ModelConfig
from melee_model.examples import ExampleSource
from melee_model.layout import FrameLayout
from melee_model.losses import compute_losses
from melee_model.model import build_model

from conftest import SHARED_GAMES, SHARED_SKIPPED, SOME, games_by_hash, replay, temp_replays, zip_of_gzipped

SMALL = dict(batch_size=512, pieces_per_group=3, piece_frames=2048, require_fields="none", num_workers=0)


def assert_same_games(path, storage_options, reference) -> None:
    games, expected = games_by_hash(path, storage_options), games_by_hash(reference)
    assert games.keys() == expected.keys()
    for digest, game in expected.items():
        got = games[digest]
        assert (
            np.array_equal(got.floats, game.floats)
            and np.array_equal(got.ints, game.ints)
            and np.array_equal(got.state_age, game.state_age)
        )
        assert got.info == game.info


def skip_reasons(path, storage_options=None) -> list[str]:
    return sorted(s.reason for s in open_store(path, storage_options).skipped)


def parts_in_bucket(s3, url) -> set[int]:
    names = s3.filesystem().ls(url.removeprefix("s3://") + "/parts", detail=False)
    return {int(name.rsplit("/", 1)[-1]) for name in names if name.rsplit("/", 1)[-1].isdigit()}


@pytest.mark.slow
def test_encode_into_a_bucket_equals_a_local_encode(s3, replays_dir, shared_store, capsys):
    url = f"s3://{s3.new_bucket()}/ranked.zarr"
    summary = encode([replays_dir], url, EncodeOptions(progress=False, workers=2, storage_options=s3.storage_options))
    assert (summary.games, len(summary.skipped)) == (SHARED_GAMES, SHARED_SKIPPED)
    assert_same_games(url, s3.storage_options, shared_store)
    assert skip_reasons(url, s3.storage_options) == skip_reasons(shared_store)
    store = open_store(url, s3.storage_options)
    assert parts_in_bucket(s3, url) == set(store.parts)

    assert cli_main(["info", url, "--json", "--storage-option", f"endpoint_url={s3.endpoint_url}"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["games"] == SHARED_GAMES and info["frames"] == store.n_frames and info["bytes_on_disk"] > info["frames"]

    again = encode([replays_dir], url, EncodeOptions(progress=False, storage_options=s3.storage_options))
    assert (again.games, again.already_present) == (0, SHARED_GAMES + SHARED_SKIPPED)  # resumed: nothing encoded twice


def test_inputs_in_a_bucket_folder_and_zip(s3, tmp_path):
    bucket = s3.new_bucket()
    fs = s3.filesystem()
    for name in SOME:
        fs.put_file(replay(name), f"{bucket}/replays/{name}")
    archive = tmp_path / "dump.zip"
    zip_of_gzipped(archive, SOME)
    fs.put_file(str(archive), f"{bucket}/dump.zip")
    before = temp_replays()

    local = str(tmp_path / "local.zarr")
    encode([replay(n) for n in SOME], local, EncodeOptions(progress=False))
    for given in (f"s3://{bucket}/replays/", f"s3://{bucket}/dump.zip"):
        path = str(tmp_path / f"{given.rsplit('/', 2)[-2]}.zarr")
        encode([given], path, EncodeOptions(progress=False, storage_options=s3.storage_options))
        assert_same_games(path, None, local)
        assert skip_reasons(path) == skip_reasons(local)
        assert all(source.startswith(f"s3://{bucket}/") for source in open_store(path).games["source"])
    assert temp_replays() == before  # peppi's temporary copies are always removed


@pytest.fixture(scope="module")
def empty_store(s3) -> str:
    """A store with nothing committed yet, in its own bucket."""
    url = f"s3://{s3.new_bucket()}/leased.zarr"
    StoreWriter(url, storage_options=s3.storage_options).close()
    return url


def test_a_live_lease_refuses_a_second_writer_and_an_expired_one_is_taken_over(s3, empty_store):
    with StoreWriter(empty_store, storage_options=s3.storage_options):
        with pytest.raises(StoreError, match=r"is being written by pid \d+ on .*refusing a second writer"):
            StoreWriter(empty_store, storage_options=s3.storage_options)
    StoreWriter(empty_store, storage_options=s3.storage_options).close()  # released: the next writer need not wait

    holder = _writer_process(empty_store, s3, ttl=1.0)  # dies by kill -9, leaving its lease to expire
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with pytest.raises(StoreError, match="refusing a second writer"):
        StoreWriter(empty_store, storage_options=s3.storage_options)
    time.sleep(1.2)
    StoreWriter(empty_store, storage_options=s3.storage_options).close()


def test_a_writer_that_lost_its_lease_cannot_commit(s3, empty_store):
    stalled = _writer_process(empty_store, s3, ttl=1.0)
    stalled.send_signal(signal.SIGSTOP)  # frozen past its lease's expiry
    time.sleep(1.2)
    with StoreWriter(empty_store, storage_options=s3.storage_options) as successor:
        successor.commit({}, [], [SkipRecord("by the successor", "test")])
    stalled.send_signal(signal.SIGCONT)
    out, _ = stalled.communicate("commit\n", timeout=30)
    assert out.startswith("refused:") and "lease" in out and len(out.strip().splitlines()) == 1
    assert [s.source for s in open_store(empty_store, s3.storage_options).skipped] == ["by the successor"]


def _writer_process(url, s3, ttl: float) -> subprocess.Popen:
    """A process holding the store's writer lease (with a short TTL) until told to commit on stdin."""
    script = f"""
import sys
from melee_encode import lock
from melee_encode.errors import StoreError
from melee_encode.format import SkipRecord
from melee_encode.writer import StoreWriter
lock.DEFAULT_TTL = {ttl}
writer = StoreWriter({url!r}, storage_options={s3.storage_options!r})
print("ready", flush=True)
sys.stdin.readline()
try:
    writer.commit({{}}, [], [SkipRecord("by the stalled writer", "test")])
    print("committed", flush=True)
except StoreError as error:
    print("refused:", error, flush=True)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.fixture(scope="module")
def bucket_copy(s3, shared_store) -> str:
    """The shared store, copied object by object into a bucket."""
    return s3.put_store(shared_store, "shared.zarr")


def test_the_endpoint_and_credentials_come_from_the_environment(s3, bucket_copy):
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint_url}
    result = subprocess.run(
        [sys.executable, "-m", "melee_encode.cli", "info", bucket_copy, "--json"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["games"] == SHARED_GAMES


def example_source(path, storage_options=None, **overrides) -> ExampleSource:
    config = DataConfig(**{**SMALL, **overrides})
    store = open_store(path, storage_options)
    layout = FrameLayout(store.schema, context_len=config.context_len)
    return ExampleSource(store, layout, config, storage_options=storage_options)


def assert_same_batches(expected: ExampleSource, got: ExampleSource, epoch: int = 1, world: int = 1, workers: int = 0) -> None:
    """Every rank's batches of an epoch: the same examples in the same order, with equal tensors."""
    for rank in range(world):
        count = 0
        loaders = (source.loader("train", epoch, rank=rank, world=world, num_workers=workers) for source in (expected, got))
        for a, b in itertools.zip_longest(*loaders):
            assert a is not None and b is not None and a.keys() == b.keys()
            assert all(torch.equal(a[key], b[key]) for key in a)
            count += 1
        assert count > 3


@pytest.mark.slow
@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2)])
def test_the_loader_reads_the_bucket_as_it_reads_local_disk(s3, shared_store, bucket_copy, world, workers):
    assert_same_batches(example_source(shared_store), example_source(bucket_copy, s3.storage_options), world=world, workers=workers)


def test_the_chunk_cache_stays_within_its_bound_and_changes_nothing(s3, shared_store, bucket_copy, tmp_path):
    local = example_source(shared_store)
    cached = example_source(bucket_copy, s3.storage_options, cache_dir=str(tmp_path / "cache"), cache_mb=1)
    for _ in range(2):  # the first epoch fills the cache and evicts; the second reads partly from it
        assert_same_batches(local, cached, epoch=0)
    files = [os.path.join(d, f) for d, _, names in os.walk(tmp_path / "cache") for f in names]
    assert files and sum(os.path.getsize(f) for f in files) <= 1 << 20


def test_a_training_step_on_a_batch_from_the_bucket(s3, bucket_copy):
    source = example_source(bucket_copy, s3.storage_options)
    batch = next(iter(source.loader("train", 0)))
    batch = batch_to_device(batch, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=64, n_layers=2, d_state=16, headdim=16, dropout=0.0, backend="torch"), source.layout)
    losses = compute_losses(model(batch["float_ctx"], batch["int_ctx"], batch["next_ctrl"]), batch, source.layout, LossConfig())
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(losses["total"]) and grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
def test_train_a_few_steps_of_the_tiny_config_from_the_bucket(s3, bucket_copy, tmp_path):
    from test_train import metrics, torchrun_train

    output = tmp_path / "from-bucket"
    options = ["--set", "train.max_steps=10", "--set", "train.log_interval=5", "--set", "train.eval_at_start=false"]
    result = torchrun_train(bucket_copy, output, *options, "--storage-option", f"endpoint_url={s3.endpoint_url}")
    assert "stopped: reached train.max_steps=10" in result.stdout
    assert [line["step"] for line in metrics(output)] == [5, 10]
    state = json.loads((output / "latest" / "state.json").read_text())
    assert state["store"]["path"] == bucket_copy and state["progress"]["step"] == 10
