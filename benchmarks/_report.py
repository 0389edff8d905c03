"""Shared output of the benchmark scripts: a plain-text table, or JSON with --json."""

from __future__ import annotations

import json
import resource
import sys
import time


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    Linux's VmHWM where there is one: ru_maxrss carries a parent's peak over fork and exec (a
    benchmark's subprocess would report the larger RSS of the process that started it)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_calls(fn, repeats: int, sync=lambda: None) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after one warm-up call (allocations, autotuning);
    `sync` waits for queued device work (torch.cuda.synchronize on a GPU)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return times


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """Rows of (measure, value, reference or comment)."""
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(title)
    print("-" * len(title))
    for name, value, comment in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {comment}")


def emit(figures: dict, as_json: bool, title: str, rows: list[tuple[str, str, str]]) -> None:
    if as_json:
        json.dump(figures, sys.stdout, indent=1)
        print()
    else:
        print_table(title, rows)
