"""Training-example throughput from a store, in one process, against two baselines from the same run.

    python benchmarks/loader_throughput.py [--store STORE] [--batch-size 4096] [--json]

Without --store, the shared replays (../shared/replays) are encoded into a temporary store first.
Rows:
- the data pipeline (melee_model.examples) in this process (num_workers=0), train split, over as many
  epochs as it takes to pass --min-examples, with the peak RSS of the process;
- baseline: random 11-frame windows read one by one from the compressed Zarr arrays (what a
  per-sample `__getitem__` over the store does);
- ceiling: the same batch gathers from arrays already decoded in memory (no decoding at all).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from melee_encode import EncodeOptions, Store, encode, open_store  # noqa: E402
from melee_model.batches import build_batch  # noqa: E402
from melee_model.config import DataConfig  # noqa: E402
from melee_model.examples import ExampleSource  # noqa: E402
from melee_model.layout import FrameLayout  # noqa: E402

from _report import emit, peak_rss_mb  # noqa: E402

TARGET = 250_000
REFERENCE_PER_PROCESS = 4_300  # the reference's per-sample loader, samples/s per process


def pipeline_rate(source: ExampleSource, min_examples: int) -> tuple[float, int]:
    examples, seconds, epoch = 0, 0.0, 0
    while examples < min_examples:
        loader = source.loader("train", epoch, num_workers=0)
        started = time.perf_counter()
        for batch in loader:
            examples += len(batch["example_id"])
        seconds += time.perf_counter() - started
        epoch += 1
    return examples / seconds, examples


def per_window_rate(store: Store, layout: FrameLayout, windows: int = 300) -> float:
    """Random (K+1)-frame windows, each read from the compressed arrays on its own."""
    rng = np.random.default_rng(0)
    games = rng.integers(0, len(store), windows)
    started = time.perf_counter()
    for game in games:
        length = int(store.games["length"][game])
        t = int(rng.integers(layout.context_len, length))
        store.read_frames(int(game), t - layout.context_len, t + 1)
    return windows / (time.perf_counter() - started)


def in_memory_rate(store: Store, layout: FrameLayout, batch_size: int, batches: int = 30) -> float:
    """The batch gathers alone, from one game decoded up front."""
    game = int(np.argmax(store.games["length"]))
    floats, ints, _ = store.read_frames(game)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(batches):
        anchors = rng.integers(layout.context_len, len(floats), batch_size)
        build_batch(floats, ints, anchors, layout)
    return batches * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a melee-encode store (default: encode ../shared/replays to a temporary one)")
    parser.add_argument("--replays", default="../shared/replays")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--chunks-per-group", type=int, default=DataConfig.chunks_per_group)
    parser.add_argument("--min-examples", type=int, default=2_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        store_path = args.store
        if store_path is None:
            store_path = os.path.join(tmp, "shared.zarr")
            encode([args.replays], store_path, EncodeOptions(progress=False))
        store = open_store(store_path)
        layout = FrameLayout(store.schema)
        config = DataConfig(batch_size=args.batch_size, chunks_per_group=args.chunks_per_group, require_fields="none")
        source = ExampleSource(store, layout, config)
        train_games = len(source.rows["train"])
        baseline = per_window_rate(store, layout)
        rate, examples = pipeline_rate(source, args.min_examples)
        rss = peak_rss_mb()
        ceiling = in_memory_rate(store, layout, args.batch_size)

    figures = {
        "samples_per_s": rate,
        "peak_rss_mb": rss,
        "per_window_zarr_samples_per_s": baseline,
        "in_memory_gather_samples_per_s": ceiling,
        "examples": examples,
        "batch_size": args.batch_size,
        "store_frames": store.n_frames,
        "train_games": train_games,
        "reference_samples_per_s": REFERENCE_PER_PROCESS,
        "target_samples_per_s": TARGET,
    }
    rows = [
        ("data pipeline, 1 process", f"{rate:,.0f} examples/s", f"target >= {TARGET:,}; {rate / REFERENCE_PER_PROCESS:,.0f}x the reference's ~{REFERENCE_PER_PROCESS:,}/s"),
        ("baseline: windows read one by one", f"{baseline:,.0f} examples/s", f"pipeline is {rate / baseline:,.0f}x (notes measured ~600/s)"),
        ("ceiling: gathers from decoded memory", f"{ceiling:,.0f} examples/s", "no decoding, no shuffling"),
        ("peak RSS", f"{rss:,.0f} MB", f"{examples:,} examples in batches of {args.batch_size}, {train_games} train games"),
    ]
    emit(figures, args.json, f"loader throughput ({store.n_frames:,}-frame store, chunks_per_group {args.chunks_per_group})", rows)


if __name__ == "__main__":
    main()
