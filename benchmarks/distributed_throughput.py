"""Encoding on a Dask cluster against the local process pool, and training batches from an S3 server
against local disk, in the same run.

    python benchmarks/distributed_throughput.py [--replays ../shared/replays] [--repeat 20] [--trials 3] [--json]
        [--chunk-frames N]

Encode: the replays, repeated --repeat times (duplicates allowed, so every copy is encoded and the
start-up is amortized), each run into a fresh store on local disk:
- through a Dask LocalCluster of 2 single-threaded worker processes (started once before the
  trials, as a cluster runs before its jobs; its workers warmed by one small encode);
- through the local pool, `encode(..., EncodeOptions(workers=2))` (this process and one helper).
Loader: the replays encoded once (repeated --loader-repeat times, for several chunk groups per
epoch), the store copied into a bucket of a moto S3 server on loopback (its own process); examples/s
of one train epoch in one process (num_workers=0), batch 4096: from the bucket, from the bucket with
a warm disk cache, and from local disk. --chunk-frames sets that store's chunks (smaller chunks: more
objects, more requests).
This machine's speed drifts by tens of percent: trials interleave the alternatives, the ratios are
taken within a trial, and medians are reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from statistics import median

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from melee_encode import EncodeOptions, encode, open_store  # noqa: E402
from melee_model.config import DataConfig  # noqa: E402
from melee_model.examples import ExampleSource  # noqa: E402
from melee_model.layout import FrameLayout  # noqa: E402

from _report import emit  # noqa: E402
from servers import S3Server, local_cluster  # noqa: E402

ENCODE_TARGET = 0.85  # Dask throughput / local pool throughput
LOADER_TARGET = 0.5  # S3 examples/s / local disk examples/s


def encode_rate(inputs: list[str], workdir: str, options: EncodeOptions) -> float:
    """Frames/s of one encode of `inputs` into a fresh local store."""
    started = time.perf_counter()
    summary = encode(inputs, tempfile.mkdtemp(dir=workdir, suffix=".zarr"), options)
    return summary.frames / (time.perf_counter() - started)


def encode_trials(replays: str, repeat: int, trials: int, workdir: str) -> list[tuple[float, float]]:
    """(Dask frames/s, local pool frames/s) per trial."""
    inputs = [replays] * repeat
    pool = EncodeOptions(workers=2, allow_duplicates=True, progress=False)
    with local_cluster() as client:  # restores this process's environment: the pool's helpers inherit it
        dask = EncodeOptions(dask=client, allow_duplicates=True, progress=False)
        encode_rate([replays], workdir, dask)  # warms the workers: imports, first store
        return [(encode_rate(inputs, workdir, dask), encode_rate(inputs, workdir, pool)) for _ in range(trials)]


def epoch_rate(source: ExampleSource, epoch: int) -> float:
    """Examples/s of one train epoch, loaded in this process."""
    examples = 0
    started = time.perf_counter()
    for batch in source.loader("train", epoch, num_workers=0):
        examples += len(batch["example_id"])
    return examples / (time.perf_counter() - started)


def loader_trials(
    replays: str, repeat: int, trials: int, batch_size: int, chunk_frames: int, workdir: str
) -> tuple[list[tuple[float, float, float]], dict]:
    """(S3 examples/s, S3 with warm cache, local disk) per trial, and the store's figures."""
    local = os.path.join(workdir, "loader.zarr")
    encode([replays] * repeat, local, EncodeOptions(allow_duplicates=True, progress=False, chunk_frames=chunk_frames))
    store = open_store(local)
    layout = FrameLayout(store.schema)
    config = DataConfig(batch_size=batch_size, require_fields="none", num_workers=0)
    cached = DataConfig(
        batch_size=batch_size, require_fields="none", num_workers=0, cache_dir=os.path.join(workdir, "cache"), cache_mb=4096
    )
    with S3Server() as s3:
        url = s3.put_store(local, "loader.zarr")
        sources = (
            ExampleSource(url, layout, config, storage_options=s3.storage_options),
            ExampleSource(url, layout, cached, storage_options=s3.storage_options),
            ExampleSource(store, layout, config),
        )
        epoch_rate(sources[1], 0)  # fills the cache
        results = [tuple(epoch_rate(source, trial + 1) for source in sources) for trial in range(trials)]
    figures = {
        "frames": store.n_frames,
        "chunks": sum(-(-f // store.chunk_frames) for f in store.parts.values()),
        "chunk_frames": store.chunk_frames,
        "train_examples": sources[2].example_count("train"),
    }
    return results, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", default=os.path.join(HERE, "..", "..", "shared", "replays"))
    parser.add_argument("--repeat", type=int, default=20, help="corpus repetitions for the encode runs (default 20)")
    parser.add_argument("--loader-repeat", type=int, default=4, help="corpus repetitions in the loader's store (default 4)")
    parser.add_argument("--trials", type=int, default=3, help="interleaved trials (default 3)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--chunk-frames", type=int, default=EncodeOptions.chunk_frames, help="the loader store's chunks (default %(default)s)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="distributed-bench-") as workdir:
        encodes = encode_trials(args.replays, args.repeat, args.trials, workdir)
        loads, store = loader_trials(args.replays, args.loader_repeat, args.trials, args.batch_size, args.chunk_frames, workdir)

    dask_rate, pool_rate = median(d for d, _ in encodes), median(p for _, p in encodes)
    encode_ratio = median(d / p for d, p in encodes)
    s3_rate, cached_rate, disk_rate = (median(trial[i] for trial in loads) for i in range(3))
    s3_ratio, cached_ratio = median(s / d for s, _, d in loads), median(c / d for _, c, d in loads)
    figures = {
        "dask_frames_per_s": dask_rate,
        "pool_frames_per_s": pool_rate,
        "dask_to_pool": encode_ratio,
        "s3_examples_per_s": s3_rate,
        "s3_cached_examples_per_s": cached_rate,
        "disk_examples_per_s": disk_rate,
        "s3_to_disk": s3_ratio,
        "s3_cached_to_disk": cached_ratio,
        "repeat": args.repeat,
        "trials": args.trials,
        "batch_size": args.batch_size,
        "loader_store": store,
        "cpus": os.cpu_count(),
        "per_trial": {
            "encode": [{"dask": d, "pool": p} for d, p in encodes],
            "loader": [{"s3": s, "s3_cached": c, "disk": d} for s, c, d in loads],
        },
        "targets": {"dask_to_pool": ENCODE_TARGET, "s3_to_disk": LOADER_TARGET},
    }
    rows = [
        (
            "encode, Dask LocalCluster 2x1 thread",
            f"{dask_rate:,.0f} frames/s",
            f"{encode_ratio:.2f}x the local pool (target >= {ENCODE_TARGET})",
        ),
        (
            "encode, local pool, 2 workers",
            f"{pool_rate:,.0f} frames/s",
            f"shared replays x{args.repeat}, local disk, median of {args.trials} trials",
        ),
        (
            "loader, S3 on loopback (moto)",
            f"{s3_rate:,.0f} examples/s",
            f"{s3_ratio:.2f}x local disk (target >= {LOADER_TARGET}); no cache",
        ),
        ("loader, S3, warm disk cache", f"{cached_rate:,.0f} examples/s", f"{cached_ratio:.2f}x local disk"),
        (
            "loader, local disk",
            f"{disk_rate:,.0f} examples/s",
            f"1 process, batch {args.batch_size}, {store['frames']:,} frames in {store['chunks']} chunks of {store['chunk_frames']:,}",
        ),
    ]
    emit(figures, args.json, f"distributed throughput ({os.cpu_count()} CPUs)", rows)


if __name__ == "__main__":
    main()
