"""Size and cost of a rollout-viewer page: N rollouts of H frames, written and opened offline.

    python benchmarks/viewer_page.py [--store STORE] [--rollouts 64] [--horizon 300] [--json]

Without --store, the shared replays (../shared/replays) are encoded into a temporary store first.
The predicted frames are the copy-last baseline (frame t0-1 held for H frames): the page's size and
cost do not depend on which model predicted. Rows: the time to read the true frames back
(`store_rollouts`), to write the page (`write_html`), its size, and, when Debian's Chromium and
chromedriver are installed, the time headless Chromium takes to open it from file:// with the
network cut (DevTools offline emulation) and the console errors it logged.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from melee_encode import EncodeOptions, encode, open_store  # noqa: E402
from melee_model.viewer import HorizonCurves, store_rollouts, write_html  # noqa: E402

from _report import emit  # noqa: E402


def copy_last(store, starts: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted frames of the copy-last baseline: (N, H, F) floats and (N, H, I) ints."""
    floats, ints = [], []
    for game, t0 in starts.tolist():
        f, i, _ = store.read_frames(game, t0 - 1, t0)
        floats.append(np.repeat(f, horizon, axis=0))
        ints.append(np.repeat(i, horizon, axis=0))
    return np.stack(floats), np.stack(ints)


def curves_of(rollouts) -> HorizonCurves:
    """The copy-last curves, as the rollout metrics define them, averaged over the rollouts."""
    pos = np.mean([np.mean([np.abs(r.pred[f] - r.true[f]).mean(-1) for f in ("x", "y")], axis=0) for r in rollouts], axis=0)
    match = np.mean([(r.pred["action"] == r.true["action"]).mean(-1) for r in rollouts], axis=0)
    return HorizonCurves({"pos_error": {"copy_last": pos}, "action_match": {"copy_last": match}})


def open_offline(page: Path) -> tuple[float, list] | None:
    """(seconds until the page has drawn its first frame, its console errors), or None without a browser."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    with tempfile.TemporaryDirectory(prefix="melee-chromium-") as profile:
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd(
                "Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0}
            )
            started = time.perf_counter()
            driver.get(page.resolve().as_uri())  # returns once the page has loaded and its scripts ran
            driver.execute_script("return window.viewer.frame")
            seconds = time.perf_counter() - started
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        finally:
            driver.quit()
    return seconds, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a melee-encode store (default: encode ../shared/replays to a temporary one)")
    parser.add_argument("--replays", default="../shared/replays")
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="melee-viewer-bench-") as directory:
        store_path = args.store or str(Path(directory) / "replays.zarr")
        if args.store is None:
            encode([args.replays], store_path, EncodeOptions(progress=False))
        store = open_store(store_path)
        lengths = store.games["length"][: store.n_games]
        rng = np.random.default_rng(0)
        games = rng.choice(np.flatnonzero(lengths > args.horizon + 1), args.rollouts)
        starts = np.stack([games, rng.integers(1, lengths[games] - args.horizon + 1)], axis=1)  # (N, 2)
        pred_floats, pred_ints = copy_last(store, starts, args.horizon)
        started = time.perf_counter()
        rollouts = store_rollouts(store, starts, args.horizon, pred_floats, pred_ints)
        read = time.perf_counter() - started
        curves = curves_of(rollouts)
        page = Path(directory) / "page.html"
        started = time.perf_counter()
        write_html(page, rollouts, curves, title="benchmark")
        write = time.perf_counter() - started
        size = page.stat().st_size
        opened = open_offline(page)
    figures = {
        "rollouts": args.rollouts,
        "horizon": args.horizon,
        "page_bytes": size,
        "read_s": read,
        "write_s": write,
        "open_offline_s": None if opened is None else opened[0],
        "console_errors": None if opened is None else opened[1],
    }
    frames = args.rollouts * args.horizon
    rows = [
        ("page", f"{args.rollouts} x {args.horizon}", "rollouts x frames, true and predicted, both players"),
        ("size", f"{size / 1e6:.2f} MB", f"{size / frames:.0f} bytes per rollout frame"),
        ("read true frames", f"{read:.2f} s", "store_rollouts"),
        ("write page", f"{write:.2f} s", "write_html"),
    ]
    if opened is None:
        rows.append(("open offline", "-", "no chromium/chromedriver here"))
    else:
        rows.append(("open offline", f"{opened[0]:.2f} s", f"headless Chromium, file://, network cut; console errors: {len(opened[1])}"))
    emit(figures, args.json, "Rollout viewer page", rows)


if __name__ == "__main__":
    main()
