"""A run-card-sized store, built and read on this machine.

    python benchmarks/scale.py [--games 65000] [--chunk-frames 32768] [--json] [--dir DIR] [--keep]

Builds a store of N games from real encoded games: ../shared/corpus is encoded once (into DIR, or
reused from there), its games are held in memory, and they are written again and again under new
identities through `melee_encode.append` (no parsing): copy k of a game has content hash
xxh3_128("HASH:k") and source "SOURCE#k", and each copy appends the corpus in its own order.
Then, each in its own process, on the run card's config (experiments/mamba2-v3-65k-ranked.yaml:
GAME-ended games with every replay field the encoding uses, batches of 4096):
- `melee-encode info STORE --json` (info_s) and `scripts/plan_run.py --gpus 2 --json` (plan_s),
  wall time including the interpreter's start;
- one loader process (num_workers=0): open_s (open the store and read its game table), examples/s
  over --loader-batches batches of the train split, its own peak RSS, and the distinct games per
  batch of those batches (from example_id and the game table) next to what uniform sampling of the
  same split gives;
- one full epoch of the train split (or --epoch-split val) over 2 ranks x 2 loader workers, checked
  exactly-once with a bitmap of target frames (a second sighting is a duplicate) and per-game counts
  compared with each game's expected targets.
DIR defaults to a new temporary folder; what this run creates there is removed unless --keep (a
kept store is resumed, or reused when complete, by the next run with the same DIR and --games).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _mixing import GameIndex, uniform_distinct  # noqa: E402

from melee_encode.format import DEFAULT_CHUNK_FRAMES  # noqa: E402

from _report import emit, peak_rss_mb  # noqa: E402

CONFIG = os.path.join(ROOT, "experiments", "mamba2-v3-65k-ranked.yaml")
RANKS, WORKERS = 2, 2


# ------------------------------------------------------------------ build


def corpus_games(path: str) -> list[tuple]:
    """(EncodedGame, hash, source) of every game of a store, its arrays read once and held in memory."""
    from melee_encode import open_store
    from melee_encode.encoding import EncodedGame
    from melee_encode.format import game_info
    from melee_encode.storage import gather

    store = open_store(path)
    table = store.games
    arrays = {
        part: gather(*(a.async_array.getitem(slice(None)) for a in store.part_arrays(part))) for part in store.parts
    }  # (columns, frames) each
    games = []
    for i in range(len(store)):
        row = {name: values[i] for name, values in table.items()}
        floats, ints, state_age = (
            a[:, row["offset"] : row["offset"] + row["length"]].T for a in arrays[int(row["part"])]
        )  # (frames, columns) views
        games.append(
            (
                EncodedGame(game_info(row), store.config, floats, ints, state_age, int(row["nonfinite_replaced"])),
                str(row["hash"]),
                str(row["source"]),
            )
        )
    return games


def build(store_path: str, corpus: list[tuple], n_games: int, chunk_frames: int) -> dict:
    """Append copies of the corpus games until the store holds n_games (chunks of chunk_frames); the build's figures."""
    import xxhash

    from melee_encode.append import GameAppender

    started = time.perf_counter()
    with GameAppender(store_path, config=corpus[0][0].config, chunk_frames=chunk_frames) as appender:
        for k in range(math.ceil(n_games / len(corpus))):
            order = np.random.default_rng(k).permutation(len(corpus))[: n_games - k * len(corpus)]
            for i in order:
                game, hash, source = corpus[i]
                appender.add(game, xxhash.xxh3_128_hexdigest(f"{hash}:{k}".encode()), f"{source}#{k}")
    seconds = time.perf_counter() - started
    return {
        "built_games": appender.games,
        "built_frames": appender.frames,
        "build_s": seconds,
        "build_frames_per_s": appender.frames / seconds if appender.frames else None,
        "build_peak_rss_mb": peak_rss_mb(),
    }


def timed_json(command: list[str]) -> tuple[float, dict]:
    """Wall seconds of a command that prints JSON, and its JSON."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout)


# ------------------------------------------------------------------ reading, each in its own process


def source_for(store_path: str):
    from melee_model.config import load_config
    from melee_model.examples import ExampleSource

    return ExampleSource.for_experiment(store_path, load_config(CONFIG))


class EpochCheck:
    """Counts one epoch's examples without storing them: a bitmap of the target frames seen (a
    second sighting is a duplicate) and per-game counts, compared at the end with the split's
    expected targets per game."""

    def __init__(self, index: GameIndex, rows: np.ndarray):
        self.index = index
        self.expected = np.zeros(len(index.targets), np.int64)
        self.expected[rows] = index.targets[rows]
        self.seen = np.zeros(len(index.targets), np.int64)  # per game, table order
        self.bitmap = np.zeros(index.frames // 8 + 1, np.uint8)
        self.duplicates = self.outside = self.examples = self.batches = 0
        self.distinct: list[int] = []

    def add(self, example_id: np.ndarray) -> None:
        frame, game, inside = self.index.locate(example_id)
        self.outside += int(np.count_nonzero(~inside))
        byte, bit = frame >> 3, (1 << (frame & 7)).astype(np.uint8)
        self.duplicates += len(frame) - len(np.unique(frame)) + int(np.count_nonzero(self.bitmap[byte] & bit))
        np.bitwise_or.at(self.bitmap, byte, bit)
        self.seen += np.bincount(game, minlength=len(self.seen))
        self.distinct.append(len(np.unique(game)))
        self.examples += len(frame)
        self.batches += 1

    def exactly_once(self) -> bool:
        return self.duplicates == 0 and self.outside == 0 and bool(np.array_equal(self.seen, self.expected))


def loader_phase(store_path: str, batches: int) -> dict:
    """open_s; examples/s and peak RSS of one loader process over `batches` train batches; the
    distinct games in those batches next to uniform sampling's."""
    import torch

    from melee_encode import open_store

    torch.set_num_threads(1)
    started = time.perf_counter()
    open_store(store_path).games
    open_s = time.perf_counter() - started
    source = source_for(store_path)
    ids, started = [], time.perf_counter()
    for batch in source.loader("train", 0, num_workers=0):
        ids.append(batch["example_id"].numpy())
        if len(ids) == batches:
            break
    seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    index = GameIndex(source)
    rows = source.rows["train"]
    return {
        "open_s": open_s,
        "loader_samples_per_s": sum(map(len, ids)) / seconds,
        "loader_examples": sum(map(len, ids)),
        "loader_peak_rss_mb": rss,
        "distinct_games_per_batch": index.games_per_batch(ids),
        "uniform_distinct_games_per_batch": uniform_distinct(index.targets[rows], source.config.batch_size),
        "train_games": len(rows),
    }


def epoch_phase(store_path: str, split: str) -> dict:
    """One full epoch of `split` over RANKS ranks x WORKERS loader workers, checked exactly-once."""
    import torch

    torch.set_num_threads(1)
    source = source_for(store_path)
    check = EpochCheck(GameIndex(source), source.rows[split])
    started = time.perf_counter()
    for rank in range(RANKS):
        for batch in source.loader(split, 0, rank=rank, world=RANKS, num_workers=WORKERS):
            check.add(batch["example_id"].numpy())
    seconds = time.perf_counter() - started
    return {
        "epoch_split": split,
        "epoch_exactly_once": check.exactly_once(),
        "epoch_examples": check.examples,
        "epoch_expected_examples": int(check.expected.sum()),
        "epoch_duplicates": check.duplicates,
        "epoch_outside_targets": check.outside,
        "epoch_batches": check.batches,
        "epoch_s": seconds,
        "epoch_samples_per_s": check.examples / seconds,
        "epoch_distinct_games_per_batch": float(np.mean(check.distinct)),
    }


def run_phase(name: str, store_path: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--phase", name, store_path, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


# ------------------------------------------------------------------ the whole benchmark


def measure(args, work: str, created: list[str]) -> dict:
    from melee_encode import EncodeOptions, encode

    corpus_path = os.path.join(work, "corpus.zarr")
    figures = {"games": args.games, "chunk_frames": args.chunk_frames, "uptime_load_1min": os.getloadavg()[0]}
    if not os.path.exists(corpus_path):
        created.append(corpus_path)
        started = time.perf_counter()
        encode([args.corpus], corpus_path, EncodeOptions(progress=False))
        figures["corpus_encode_s"] = time.perf_counter() - started
    corpus = corpus_games(corpus_path)
    figures["corpus_games"] = len(corpus)
    chunks = "" if args.chunk_frames == DEFAULT_CHUNK_FRAMES else f"-chunks{args.chunk_frames}"
    store_path = os.path.join(work, f"scale-{args.games}{chunks}.zarr")
    if not os.path.exists(store_path):
        created.append(store_path)
    figures.update(build(store_path, corpus, args.games, args.chunk_frames))
    del corpus
    figures["info_s"], info = timed_json([sys.executable, "-m", "melee_encode.cli", "info", store_path, "--json"])
    figures.update(
        frames=info["frames"],
        bytes_on_disk=info["bytes_on_disk"],
        bytes_per_frame=info["bytes_per_frame"],
        data_bytes_per_frame=info["data_bytes_per_frame"],
        parts=info["parts"],
    )
    figures["plan_s"], plan = timed_json(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "plan_run.py"),
            "--config",
            CONFIG,
            "--store",
            store_path,
            "--gpus",
            str(RANKS),
            "--json",
        ]
    )
    figures.update(plan_train_examples=plan["train_examples"], plan_batches_per_gpu=plan["batches_per_epoch"])
    figures.update(run_phase("loader", store_path, str(args.loader_batches)))
    figures.update(run_phase("epoch", store_path, args.epoch_split))
    figures["uptime_load_1min_after"] = os.getloadavg()[0]
    return figures


def report(figures: dict, as_json: bool) -> None:
    f = figures
    build_rate = f"{f['build_frames_per_s']:,.0f} frames/s" if f["build_frames_per_s"] else "reused"
    rows = [
        (
            "build",
            build_rate,
            f"{f['built_games']:,} games ({f['built_frames']:,} frames) in {f['build_s']:,.0f} s; peak RSS {f['build_peak_rss_mb']:,.0f} MB",
        ),
        (
            "bytes per frame",
            f"{f['bytes_per_frame']:.2f}",
            f"{f['bytes_on_disk'] / 1e9:,.2f} GB for {f['frames']:,} frames in {f['parts']} parts",
        ),
        ("melee-encode info", f"{f['info_s']:.2f} s", "wall, interpreter start included"),
        ("open store + table", f"{f['open_s']:.2f} s", ""),
        (
            "plan_run.py",
            f"{f['plan_s']:.2f} s",
            f"wall; {f['plan_train_examples']:,} train examples, {f['plan_batches_per_gpu']:,} batches per GPU",
        ),
        (
            "loader, 1 process",
            f"{f['loader_samples_per_s']:,.0f} examples/s",
            f"{f['loader_examples']:,} examples; peak RSS {f['loader_peak_rss_mb']:,.0f} MB",
        ),
        (
            "distinct games per batch",
            f"{f['distinct_games_per_batch']:,.1f}",
            f"the same batches; uniform sampling: {f['uniform_distinct_games_per_batch']:,.1f} ({f['train_games']:,} train games)",
        ),
        (
            f"{f['epoch_split']} epoch exactly once",
            str(f["epoch_exactly_once"]),
            f"{f['epoch_examples']:,} of {f['epoch_expected_examples']:,} examples, {RANKS} ranks x {WORKERS} workers: {f['epoch_samples_per_s']:,.0f} examples/s",
        ),
    ]
    emit(
        figures,
        as_json,
        f"scale: {f['games']:,} games, chunks of {f['chunk_frames']:,} frames (load {f['uptime_load_1min']:.1f} at start, {f['uptime_load_1min_after']:.1f} at end)",
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=65_000)
    parser.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES, help="the store's chunks (default %(default)s)")
    parser.add_argument("--corpus", default=os.path.join(ROOT, "..", "shared", "corpus"))
    parser.add_argument("--dir", help="work folder for the corpus encode and the store (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep what this run creates in the work folder")
    parser.add_argument(
        "--loader-batches", type=int, default=100, help="train batches the one-process loader is timed over (default %(default)s)"
    )
    parser.add_argument(
        "--epoch-split",
        choices=("train", "val"),
        default="train",
        help="the split whose full epoch is checked exactly-once (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)  # internal: NAME STORE [ARG]
    args = parser.parse_args()
    if args.phase:
        name, store_path, *rest = args.phase
        figures = loader_phase(store_path, int(rest[0])) if name == "loader" else epoch_phase(store_path, rest[0])
        print(json.dumps(figures))
        return

    work = args.dir or tempfile.mkdtemp(prefix="scale-bench-")
    os.makedirs(work, exist_ok=True)
    created = [] if args.dir else [work]
    try:
        figures = measure(args, work, created)
    finally:
        if not args.keep:
            for path in created:
                shutil.rmtree(path, ignore_errors=True)
    report(figures, args.json)


if __name__ == "__main__":
    main()
