"""Encode throughput against peppi-py's bare parse of the same replays, in the same run.

    python benchmarks/encode_throughput.py ../shared/replays [--workers 2] [--repeat 60] [--trials 5] [--json]

Measures, each encode in a fresh process on a fresh store:
- peppi-py's `read_slippi` over the replays (the floor: parse only);
- the end-to-end encode (read, hash, parse, encode, compress, write, commit) with one worker, over
  the corpus once and `--repeat` times over (duplicates allowed), and its peak RSS both times;
- the same encode with `--workers` processes, for the scaling figure, and the bare parse in as many
  processes at once: how far this machine itself scales (cores shared with other tenants, clocks
  that drop when every core is busy), the ceiling the encode's scaling is read against;
- bytes per frame on disk of the float, int and state-age arrays.
Each trial runs the three back to back; ratios are taken within a trial and the median reported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from statistics import median

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import emit, peak_rss_mb  # noqa: E402

REFERENCE_FRAMES_PER_S = 5_300  # the reference pipeline, per core, on this machine


def peppi_parse(inputs: list[str], repeat: int) -> tuple[int, float]:
    """Frames parsed and seconds taken by peppi_py.read_slippi over every replay, `repeat` times."""
    import peppi_py

    from melee_encode.sources import iter_sources, local_replay_path

    sources = list(iter_sources(inputs))
    frames, seconds = 0, 0.0
    for _ in range(repeat):
        for source in sources:
            data = source.read_bytes()
            with local_replay_path(source, data) as path:
                started = time.perf_counter()
                try:
                    game = peppi_py.read_slippi(path)
                except BaseException:  # noqa: BLE001 - unreadable replays cost time but give no frames
                    seconds += time.perf_counter() - started
                    continue
                seconds += time.perf_counter() - started
                frames += len(game.frames.id)
    return frames, seconds


def _parse_worker(inputs: list[str], repeat: int, barrier, results) -> None:
    import peppi_py  # noqa: F401 - imported before the barrier, so that every process starts parsing at once

    barrier.wait()
    started = time.time()
    frames, _ = peppi_parse(inputs, repeat)
    results.put((frames, started, time.time()))


def peppi_parse_parallel(inputs: list[str], repeat: int, processes: int) -> float:
    """Frames per second of wall time of `processes` bare parses started together, each `repeat` times over."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_parse_worker, args=(inputs, repeat, barrier, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    runs = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(r[0] for r in runs) / (max(r[2] for r in runs) - min(r[1] for r in runs))


def run_encode(inputs: list[str], workers: int, repeat: int) -> dict:
    """Encode in a fresh process; return its figures."""
    with tempfile.TemporaryDirectory(prefix="encode-bench-") as tmp:
        request = {"inputs": inputs * repeat, "store": os.path.join(tmp, "bench.zarr"), "workers": workers}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(request)], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def child(request: dict) -> None:
    from melee_encode import EncodeOptions, encode, open_store

    options = EncodeOptions(workers=request["workers"], allow_duplicates=True, progress=False)
    started = time.perf_counter()
    summary = encode(request["inputs"], request["store"], options)
    seconds = time.perf_counter() - started
    store = open_store(request["store"])
    figures = {
        "frames": summary.frames,
        "games": summary.games,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "data_bytes": store.data_bytes(),
        "store_bytes": store.info()["bytes_on_disk"],
    }
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", default=["../shared/replays"])
    parser.add_argument("--workers", type=int, default=2, help="workers for the scaling run (default 2)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=60,
        help="corpus repetitions for the long runs (default 60: the ~1 s start of the helpers was a third of a 20x run's wall time)",
    )
    parser.add_argument("--trials", type=int, default=5, help="trials of peppi, one worker and the pool, back to back (default 5)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    # This machine's speed drifts by tens of percent over seconds: each trial runs peppi, one worker
    # and the pool back to back, and the ratios are taken within a trial, then the median.
    trials = []
    for _ in range(args.trials):
        frames, seconds = peppi_parse(args.sources, args.repeat)
        peppi_one = peppi_parse_parallel(args.sources, max(1, args.repeat // args.workers), 1)
        peppi_many = peppi_parse_parallel(args.sources, max(1, args.repeat // args.workers), args.workers)
        single = run_encode(args.sources, 1, args.repeat)
        pool = run_encode(args.sources, args.workers, args.repeat)
        trials.append((frames / seconds, single, pool, peppi_many / peppi_one))
    once = run_encode(args.sources, 1, 1)

    rate_of = lambda run: run["frames"] / run["seconds"]  # noqa: E731
    peppi_rate = median(t[0] for t in trials)
    rate = median(rate_of(t[1]) for t in trials)
    pool_rate = median(rate_of(t[2]) for t in trials)
    long = trials[0][1]
    peak_long = max(t[1]["peak_rss_mb"] for t in trials)
    figures = {
        "frames_per_s": rate,
        "peppi_frames_per_s": peppi_rate,
        "ratio_to_peppi": median(rate_of(t[1]) / t[0] for t in trials),
        "bytes_per_frame": long["data_bytes"] / long["frames"],
        "store_bytes_per_frame": long["store_bytes"] / long["frames"],
        "peak_rss_mb": peak_long,
        "peak_rss_mb_once": once["peak_rss_mb"],
        "rss_ratio_repeat_to_once": peak_long / once["peak_rss_mb"],
        "frames_per_s_once": rate_of(once),
        "workers": args.workers,
        "frames_per_s_workers": pool_rate,
        "speedup_workers": median(rate_of(t[2]) / rate_of(t[1]) for t in trials),
        "peppi_speedup_workers": median(t[3] for t in trials),
        "frames": long["frames"],
        "repeat": args.repeat,
        "trials": args.trials,
        "per_trial": [{"peppi": t[0], "one_worker": rate_of(t[1]), "workers": rate_of(t[2]), "peppi_speedup": t[3]} for t in trials],
    }
    rows = [
        (
            "peppi read_slippi (parse only)",
            f"{peppi_rate:,.0f} frames/s",
            f"{long['frames']:,} frames encoded, {args.repeat}x corpus, median of {args.trials} trials",
        ),
        (
            "encode, 1 worker",
            f"{rate:,.0f} frames/s",
            f"{figures['ratio_to_peppi']:.2f}x peppi (target >= 0.50); reference pipeline ~{REFERENCE_FRAMES_PER_S:,}",
        ),
        ("encode, 1 worker, corpus once", f"{figures['frames_per_s_once']:,.0f} frames/s", "includes store creation and commit"),
        (
            f"encode, {args.workers} workers",
            f"{pool_rate:,.0f} frames/s",
            f"{figures['speedup_workers']:.2f}x one worker (target >= 1.7 at 2)",
        ),
        (
            f"bare parse, {args.workers} processes at once",
            f"{figures['peppi_speedup_workers']:.2f}x",
            "one process: this machine's own scaling, the ceiling",
        ),
        ("bytes/frame (float+int+state_age)", f"{figures['bytes_per_frame']:.2f}", "target <= 20; reference 688 in RAM, ~350 as .slp"),
        ("bytes/frame (whole store)", f"{figures['store_bytes_per_frame']:.2f}", "with the per-game table and metadata"),
        ("peak RSS, corpus once", f"{once['peak_rss_mb']:.0f} MB", ""),
        (f"peak RSS, corpus {args.repeat}x", f"{peak_long:.0f} MB", f"{figures['rss_ratio_repeat_to_once']:.2f}x once (target <= 1.20)"),
    ]
    emit(figures, args.json, f"encode throughput ({os.cpu_count()} CPUs)", rows)


if __name__ == "__main__":
    main()
