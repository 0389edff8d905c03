"""Training-data throughput and mixing from a store, in one process, against baselines from the same run.

    python benchmarks/loader_throughput.py [--store STORE] [--batch-size 4096] [--trials 3] [--json]
        [--compare-store OTHER [--compare-seq-piece-frames N] [--compare-seq-pieces-per-group N]]

Without --store, the shared replays (../shared/replays) are encoded into a temporary store first.
Every configuration runs in a fresh process (its peak RSS is its own), trials interleaved, medians:
- the card objective with the default mixing (data.piece_frames x data.pieces_per_group drawn from the
  whole store): examples/s, distinct games per batch, peak RSS;
- the same pieces dealt into hands of one stored chunk (data.chunk_visits --hands, default 8: a chunk
  decoded about that many times an epoch; faster, less mixed);
- baseline, today's grouping before this loader: whole stored chunks, 4 to a group;
- the exact expectation of distinct games per batch under uniform sampling of the same split;
- the sequence objective (windows of --seq-len; pieces as experiments/mamba2-v3-seq.yaml has them, or
  --seq-piece-frames x --seq-pieces-per-group): supervised targets/s, distinct games per batch of
  windows against uniform sampling of the same windows, peak RSS;
- baseline: random (K+1)-frame windows read one by one from the compressed arrays (a per-sample
  `__getitem__` over the store); ceiling: the card's batch gathers from decoded memory.
With --compare-store, the card's default and the sequence row also read OTHER (e.g. the same games
encoded with other --chunk-frames; its sequence pieces from --compare-seq-*), each trial of OTHER next
to the same trial of STORE, and the table gives OTHER's figures and its rate over STORE's, the median
of the per-trial ratios with their range: separate runs on this machine differ by more than that.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _mixing import GameIndex, items_per_game, uniform_distinct  # noqa: E402

from melee_encode import EncodeOptions, Store, encode, open_store  # noqa: E402
from melee_encode.errors import MeleeError  # noqa: E402
from melee_model.batches import build_batch  # noqa: E402
from melee_model.config import DataConfig, load_config  # noqa: E402
from melee_model.examples import ExampleSource  # noqa: E402
from melee_model.layout import FrameLayout  # noqa: E402

from _report import emit, peak_rss_mb  # noqa: E402

TARGETS = {"samples_per_s": 300_000, "distinct_games_per_batch": 256, "peak_rss_mb": 2000, "targets_per_s": 5_000_000}
REFERENCE_PER_PROCESS = 4_300  # the reference's per-sample loader, samples/s per process
SEQUENCE_DATA = load_config(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "mamba2-v3-seq.yaml")
).data


def source_for(store_path: str, **data) -> ExampleSource:
    store = open_store(store_path)
    config = DataConfig(require_fields="none", num_workers=0, **data)
    return ExampleSource(store, FrameLayout(store.schema), config)


def measure(store_path: str, data: dict, min_items: int, counted: int = 200) -> dict:
    """One configuration in this (fresh) process: items/s, targets/s, distinct games per full batch,
    peak RSS. The loader runs back to back: the games of the first `counted` full batches are counted
    after the timed loop, since work between batches would let the loader's read-ahead threads decode
    untimed. The loader stops at the first batch past min_items (in a later epoch if one is shorter)."""
    torch.set_num_threads(1)
    source = source_for(store_path, **data)
    items = targets = 0
    started, epoch, kept = time.perf_counter(), 0, []
    while items < min_items:
        for batch in source.loader("train", epoch):
            items += len(batch["example_id"])
            targets += int(batch["target_mask"].sum()) if "target_mask" in batch else len(batch["example_id"])
            if len(batch["example_id"]) == source.config.batch_size and len(kept) < counted:
                kept.append(batch["example_id"].numpy())
            if items >= min_items:
                break
        epoch += 1
    seconds = time.perf_counter() - started
    return {
        "items_per_s": items / seconds,
        "targets_per_s": targets / seconds,
        "distinct_games_per_batch": GameIndex(source).games_per_batch(kept),
        "peak_rss_mb": peak_rss_mb(),
        "items": items,
    }


def in_child(store_path: str, data: dict, min_items: int) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (store_path, data, min_items))


def interleaved(jobs: dict[str, tuple[str, dict, int]], trials: int) -> dict[str, list[dict]]:
    """Every job (store, data config, items) once a trial, in order, each in a fresh process: the
    machine's drift hits every job alike."""
    results = {name: [] for name in jobs}
    for _ in range(trials):
        for name, job in jobs.items():
            results[name].append(in_child(*job))
    return results


def medians(results: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def ratios(over: list[dict], under: list[dict], key: str) -> list[float]:
    """[median, lowest, highest] of the per-trial ratios over[i][key] / under[i][key]."""
    each = [a[key] / b[key] for a, b in zip(over, under)]
    return [statistics.median(each), min(each), max(each)]


def compare_figures(runs: dict[str, dict], trials: dict[str, list[dict]], store: Store, seq: dict) -> dict:
    """The --compare-store object of the JSON: that store's two rows (jobs "compare_mixed" and
    "compare_sequence": their medians in `runs`, their trials in `trials`; `seq` the latter's data
    config) and their per-trial rates over the main store's."""
    mixed, sequence = trials["compare_mixed"], trials["compare_sequence"]
    m, q = runs["compare_mixed"], runs["compare_sequence"]
    return {
        "store": store.path,
        "chunk_frames": store.chunk_frames,
        "samples_per_s": m["items_per_s"],
        "distinct_games_per_batch": m["distinct_games_per_batch"],
        "peak_rss_mb": m["peak_rss_mb"],
        "samples_per_s_ratio": ratios(mixed, trials["mixed"], "items_per_s"),
        "sequence": {
            "targets_per_s": q["targets_per_s"],
            "distinct_games_per_batch": q["distinct_games_per_batch"],
            "peak_rss_mb": q["peak_rss_mb"],
            "piece_frames": seq["piece_frames"],
            "pieces_per_group": seq["pieces_per_group"],
            "targets_per_s_ratio": ratios(sequence, trials["sequence"], "targets_per_s"),
        },
    }


def spread(ratio: list[float]) -> str:
    return f"{ratio[0]:.2f}x the --store's ({ratio[1]:.2f}-{ratio[2]:.2f} trial by trial)"


def compare_rows(compare: dict) -> list[tuple[str, str, str]]:
    sequence = compare["sequence"]
    return [
        (
            f"{compare['store']} (chunks of {compare['chunk_frames']:,}): card default examples/s",
            f"{compare['samples_per_s']:,.0f}",
            spread(compare["samples_per_s_ratio"]),
        ),
        ("  distinct games per batch", f"{compare['distinct_games_per_batch']:,.1f}", f"peak RSS {compare['peak_rss_mb']:,.0f} MB"),
        (
            f"  sequence (pieces {sequence['piece_frames']} x {sequence['pieces_per_group']}): targets/s",
            f"{sequence['targets_per_s']:,.0f}",
            spread(sequence["targets_per_s_ratio"]),
        ),
        (
            "  distinct games per batch of windows",
            f"{sequence['distinct_games_per_batch']:,.1f}",
            f"peak RSS {sequence['peak_rss_mb']:,.0f} MB",
        ),
    ]


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
    """The card's batch gathers alone, from one game decoded up front."""
    game = int(np.argmax(store.games["length"]))
    floats, ints, _ = store.read_frames(game)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(batches):
        build_batch(floats, ints, rng.integers(layout.context_len, len(floats), batch_size), layout)
    return batches * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a melee-encode store (default: encode ../shared/replays to a temporary one)")
    parser.add_argument("--replays", default="../shared/replays")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--piece-frames", type=int, default=DataConfig.piece_frames)
    parser.add_argument("--pieces-per-group", type=int, default=DataConfig.pieces_per_group)
    parser.add_argument("--chunk-visits", type=int, default=DataConfig.chunk_visits)
    parser.add_argument("--hands", type=int, default=8, help="data.chunk_visits of the chunk_hands row (default %(default)s)")
    parser.add_argument("--seq-len", type=int, default=SEQUENCE_DATA.seq_len)
    parser.add_argument("--seq-batch-size", type=int, default=SEQUENCE_DATA.batch_size)
    parser.add_argument("--seq-piece-frames", type=int, default=SEQUENCE_DATA.piece_frames)
    parser.add_argument("--seq-pieces-per-group", type=int, default=SEQUENCE_DATA.pieces_per_group)
    parser.add_argument("--min-examples", type=int, default=8_000_000, help="card examples per trial (sequence: targets)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--compare-store", help="read the card's default and the sequence row from this store too, trials interleaved")
    parser.add_argument(
        "--compare-seq-piece-frames", type=int, help="the sequence row's pieces on --compare-store (default: --seq-piece-frames)"
    )
    parser.add_argument("--compare-seq-pieces-per-group", type=int, help="(default: --seq-pieces-per-group)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:  # before minutes of trials
        other = open_store(args.compare_store) if args.compare_store else None
    except MeleeError as error:
        raise SystemExit(f"--compare-store: {error}")

    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        store_path = args.store
        if store_path is None:
            store_path = os.path.join(tmp, "shared.zarr")
            encode([args.replays], store_path, EncodeOptions(progress=False))
        mixed = dict(batch_size=args.batch_size, piece_frames=args.piece_frames, pieces_per_group=args.pieces_per_group)
        configs = {
            "mixed": {**mixed, "chunk_visits": args.chunk_visits},
            "chunk_hands": {**mixed, "chunk_visits": args.hands},
            "chunk_groups": dict(batch_size=args.batch_size, piece_frames=0, pieces_per_group=4),
            "sequence": dict(
                batch_size=args.seq_batch_size,
                objective="sequence",
                seq_len=args.seq_len,
                piece_frames=args.seq_piece_frames,
                pieces_per_group=args.seq_pieces_per_group,
            ),
        }
        budget = {name: args.min_examples for name in configs} | {"sequence": args.min_examples // args.seq_len * 4}
        jobs = {name: (store_path, data, budget[name]) for name, data in configs.items()}
        if other is not None:
            other_seq = {
                **configs["sequence"],
                "piece_frames": args.compare_seq_piece_frames or args.seq_piece_frames,
                "pieces_per_group": args.compare_seq_pieces_per_group or args.seq_pieces_per_group,
            }
            jobs |= {
                "compare_mixed": (args.compare_store, configs["mixed"], budget["mixed"]),
                "compare_sequence": (args.compare_store, other_seq, budget["sequence"]),
            }
        trials = interleaved(jobs, args.trials)
        runs = {name: medians(results) for name, results in trials.items()}
        source = source_for(store_path, **configs["mixed"])
        store, layout = source.store, source.layout
        uniform = uniform_distinct(items_per_game(source.pieces["train"]), args.batch_size)
        windows = items_per_game(source_for(store_path, **configs["sequence"]).pieces["train"])
        uniform_windows = uniform_distinct(windows, args.seq_batch_size)
        baseline, ceiling = per_window_rate(store, layout), in_memory_rate(store, layout, args.batch_size)

    mixed, hands, chunks, sequence = runs["mixed"], runs["chunk_hands"], runs["chunk_groups"], runs["sequence"]
    figures = {
        "samples_per_s": mixed["items_per_s"],
        "peak_rss_mb": mixed["peak_rss_mb"],
        "distinct_games_per_batch": mixed["distinct_games_per_batch"],
        "uniform_distinct_games_per_batch": uniform,
        "chunk_hands": {
            "samples_per_s": hands["items_per_s"],
            "distinct_games_per_batch": hands["distinct_games_per_batch"],
            "peak_rss_mb": hands["peak_rss_mb"],
            "chunk_visits": args.hands,
        },
        "chunk_groups": {
            "samples_per_s": chunks["items_per_s"],
            "distinct_games_per_batch": chunks["distinct_games_per_batch"],
            "peak_rss_mb": chunks["peak_rss_mb"],
        },
        "targets_per_s": {"last": mixed["targets_per_s"], "sequence": sequence["targets_per_s"]},
        "sequence": {
            "windows_per_s": sequence["items_per_s"],
            "peak_rss_mb": sequence["peak_rss_mb"],
            "distinct_games_per_batch": sequence["distinct_games_per_batch"],
            "uniform_distinct_games_per_batch": uniform_windows,
            "seq_len": args.seq_len,
            "batch_size": args.seq_batch_size,
            "piece_frames": args.seq_piece_frames,
            "pieces_per_group": args.seq_pieces_per_group,
        },
        "per_window_zarr_samples_per_s": baseline,
        "in_memory_gather_samples_per_s": ceiling,
        "batch_size": args.batch_size,
        "piece_frames": args.piece_frames,
        "pieces_per_group": args.pieces_per_group,
        "chunk_visits": args.chunk_visits,
        "store_games": len(store),
        "store_frames": store.n_frames,
        "train_games": len(source.rows["train"]),
        "trials": args.trials,
        "targets": TARGETS,
    }
    if other is not None:
        figures["compare"] = compare_figures(runs, trials, other, other_seq)
    goal = min(TARGETS["distinct_games_per_batch"], 0.5 * uniform)
    rows = [
        (
            "card objective, mixed: examples/s",
            f"{mixed['items_per_s']:,.0f}",
            f"target >= {TARGETS['samples_per_s']:,}; {mixed['items_per_s'] / REFERENCE_PER_PROCESS:,.0f}x the reference's ~{REFERENCE_PER_PROCESS:,}/s",
        ),
        (
            "  distinct games per batch",
            f"{mixed['distinct_games_per_batch']:,.1f}",
            f"target >= {goal:,.0f} (256, or half of uniform's {uniform:,.1f})",
        ),
        ("  peak RSS", f"{mixed['peak_rss_mb']:,.0f} MB", f"target <= {TARGETS['peak_rss_mb']:,} MB"),
        (f"pieces in hands of one chunk (chunk_visits {args.hands}): examples/s", f"{hands['items_per_s']:,.0f}", "faster, less mixed"),
        ("  distinct games per batch", f"{hands['distinct_games_per_batch']:,.1f}", f"peak RSS {hands['peak_rss_mb']:,.0f} MB"),
        ("baseline, 4 whole chunks a group: examples/s", f"{chunks['items_per_s']:,.0f}", "the grouping before this loader"),
        ("  distinct games per batch", f"{chunks['distinct_games_per_batch']:,.1f}", f"peak RSS {chunks['peak_rss_mb']:,.0f} MB"),
        (
            f"sequence objective, windows of {args.seq_len} (pieces {args.seq_piece_frames} x {args.seq_pieces_per_group}): targets/s",
            f"{sequence['targets_per_s']:,.0f}",
            f"target >= {TARGETS['targets_per_s']:,}; peak RSS {sequence['peak_rss_mb']:,.0f} MB",
        ),
        (
            f"  distinct games per batch of {args.seq_batch_size} windows",
            f"{sequence['distinct_games_per_batch']:,.1f}",
            f"uniform over the same windows: {uniform_windows:,.1f}",
        ),
        ("baseline: windows read one by one", f"{baseline:,.0f}", "examples/s"),
        ("ceiling: gathers from decoded memory", f"{ceiling:,.0f}", "examples/s, no decoding, no shuffling"),
        *(compare_rows(figures["compare"]) if other is not None else []),
    ]
    title = f"loader ({len(store):,} games, {store.n_frames:,} frames; batch {args.batch_size}, pieces {args.piece_frames} x {args.pieces_per_group}, chunk visits {args.chunk_visits}; median of {args.trials})"
    emit(figures, args.json, title, rows)


if __name__ == "__main__":
    main()
