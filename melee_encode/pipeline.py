"""The encode pipeline: replay sources -> workers -> parts -> committed store.

Each worker reads a replay's bytes, hashes them (the content hash identifies a game across runs and
archives), skips games the store already holds, parses and encodes the rest, and appends them to its
own part of the store; a part is closed after `part_frames` frames. With `workers=N`, this process
is one worker and N-1 helper processes are the others. Between its own replays this process also
coordinates: it hands out sources, commits a part's games as soon as the part is closed, records
every skipped replay with its reason, and draws the progress bar. Memory is bounded by workers x
(one replay + one chunk buffer) whatever the corpus size: nothing is ever concatenated.

Re-running an interrupted encode resumes: the store's writer removes what was never committed and
the content hashes skip what was.

Past one machine, `EncodeOptions(dask=...)` runs the same `ReplayEncoder` as Dask tasks instead of
local helpers (see `distributed`, imported only then); the `Coordinator` that turns outcomes into
commits is the same for both.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import xxhash

from .config import EncodingConfig
from .encoding import encode_game
from .replay import ReplayError, one_line
from .salvage import read_salvaging
from .sources import UNREADABLE, OversizeError, ReplaySource, count_sources, is_transient, iter_sources
from .storage import open_zarr
from .store import (
    DEFAULT_CHUNK_FRAMES,
    DEFAULT_PART_FRAMES,
    Filters,
    GameRecord,
    PartWriter,
    SkipRecord,
    StoreWriter,
)

SKIP_COMMIT_SECONDS = 30.0  # skipped replays are committed at least this often


@dataclass
class EncodeOptions:
    """How to encode: the encoding, the filters, and how to run."""

    config: EncodingConfig = field(default_factory=EncodingConfig)
    filters: Filters = field(default_factory=Filters)
    workers: int = 1
    max_games: int | None = None  # stop when the store holds this many games
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    part_frames: int = DEFAULT_PART_FRAMES
    allow_duplicates: bool = False  # encode content already in the store again (benchmarks)
    progress: bool = True
    storage_options: dict = field(default_factory=dict)  # fsspec options for every URL (never credentials)
    dask: object = None  # a Dask scheduler address or distributed.Client: encode as tasks on that cluster
    dask_batch: int = 256  # most replays per Dask task (the last ones are smaller); each task writes one part
    max_replay_mb: float = 64  # a replay bigger than this (stored or decompressed) is skipped unread; real ones are < 15

    @property
    def max_replay_bytes(self) -> int:
        return int(self.max_replay_mb * 2**20)


@dataclass
class EncodeSummary:
    """What one encode run did."""

    games: int = 0  # games added
    frames: int = 0  # frames added
    already_present: int = 0  # replays skipped because the store holds them
    skipped: list[SkipRecord] = field(default_factory=list)
    seconds: float = 0.0
    store_games: int = 0  # games in the store afterwards

    def skipped_by_reason(self) -> Counter:
        """Skip counts by kind of reason (the text before the first colon)."""
        return Counter(s.reason.split(":")[0] for s in self.skipped)


@dataclass
class Outcome:
    """A worker's answer for one source, and the part it closed, if any."""

    source: str
    hash: str = ""
    game: GameRecord | None = None
    skip: SkipRecord | None = None
    present: bool = False
    closed_part: tuple[int, int] | None = None  # (part, frames)


def encode(inputs: Iterable[str], store_path: str, options: EncodeOptions | None = None) -> EncodeSummary:
    """Encode every replay under `inputs` into the store at `store_path` (created if needed).

    `store_path` and the inputs may be fsspec URLs; with `options.dask`, the work runs on that cluster.
    """
    options = options or EncodeOptions()
    inputs = [str(i) for i in inputs]
    started = time.perf_counter()
    with _runner(inputs, options) as run:
        with StoreWriter(store_path, options.config, options.filters, options.chunk_frames, options.storage_options) as writer:
            coordinator = Coordinator(writer, options)
            listed = iter_sources(inputs, options.storage_options, options.max_replay_bytes)
            sources = (s for s in listed if s.name not in writer.known_sources)
            total = count_sources(inputs, options.storage_options) if options.progress else None
            with _progress(options.progress, total) as bar:
                coordinator.bar = bar
                run(coordinator, sources)
            summary = coordinator.summary
            summary.store_games = writer.n_games
    summary.seconds = time.perf_counter() - started
    return summary


@contextlib.contextmanager
def _runner(inputs: list[str], options: EncodeOptions) -> Iterator[Callable[["Coordinator", Iterator[ReplaySource]], None]]:
    """How the sources get encoded: on a Dask cluster, or here and in local helper processes.
    Chosen before the store opens, so that a bad cluster address or input fails first."""
    if options.dask is not None:
        from .distributed import dask_runner

        with dask_runner(inputs, options) as run:
            yield run
        return
    if options.workers > 1:
        _mp_context()  # starts the worker server now, while the store opens
    yield _run_local


def content_hash(data: bytes) -> str:
    """The identity of a replay: xxh3-128 of its decompressed bytes, in hex (10 GB/s; sha256 is 1.4)."""
    return xxhash.xxh3_128_hexdigest(data)


class ReplayEncoder:
    """Turns sources into games appended to parts; runs in a worker process, a Dask task or inline."""

    def __init__(self, store_path: str, options: EncodeOptions, known_hashes: set[str], allocate_part: Callable[[], int]):
        self.root = open_zarr(store_path, "r+", options.storage_options)
        self.options = options
        self.known_hashes = set() if options.allow_duplicates else known_hashes
        self.allocate_part = allocate_part
        self.schema = options.config.schema()
        self.writer: PartWriter | None = None

    def process(self, source: ReplaySource) -> Outcome:
        if source.skip:  # found while listing: a broken archive, a link, a member past the size cap
            return Outcome(source.name, skip=SkipRecord(source.name, source.skip))
        try:
            data = source.read_bytes(self.options.storage_options, self.options.max_replay_bytes)
        except OversizeError as error:
            return Outcome(source.name, skip=SkipRecord(source.name, f"too big: {error}"))
        except UNREADABLE as error:  # unreadable file, bad gzip or zip member
            if is_transient(error, source):
                raise
            return Outcome(source.name, skip=SkipRecord(source.name, f"unreadable: {one_line(error)}"))
        digest = content_hash(data)
        if digest in self.known_hashes:
            return Outcome(source.name, digest, present=True)
        try:
            raw = read_salvaging(source, data, items=self.options.config.projectiles)
            reason = self.options.filters.reject_reason(raw.info)
            if reason:
                salvaged = f" ({raw.info.salvaged})" if raw.info.salvaged else ""
                return Outcome(source.name, digest, skip=SkipRecord(source.name, f"filtered: {reason}{salvaged}", digest))
            game = encode_game(raw, self.options.config)
        except ReplayError as error:
            return Outcome(source.name, digest, skip=SkipRecord(source.name, str(error), digest))
        except Exception as error:  # a replay that breaks the encoder must not stop the corpus
            return Outcome(source.name, digest, skip=SkipRecord(source.name, f"encode error: {one_line(error)}", digest))
        part = self._part()
        offset = part.append(game)
        record = GameRecord(digest, source.name, part.part, offset, game.info, game.nonfinite_replaced)
        closed = self.finish() if part.frames >= self.options.part_frames else None
        return Outcome(source.name, digest, game=record, closed_part=closed)

    def finish(self) -> tuple[int, int] | None:
        """Close the open part; return (part, frames) or None if none was open."""
        if self.writer is None:
            return None
        part, frames = self.writer.part, self.writer.close()
        self.writer = None
        return part, frames

    def _part(self) -> PartWriter:
        if self.writer is None:
            self.writer = PartWriter(self.root, self.allocate_part(), self.schema, self.options.chunk_frames)
        return self.writer


class Coordinator:
    """Gathers outcomes, whoever produced them: dedupes, counts toward max_games, commits closed
    parts with their games, and commits skips. The runners (`_run_local`, `distributed`) dispatch."""

    def __init__(self, writer: StoreWriter, options: EncodeOptions):
        self.writer = writer
        self.options = options
        self.summary = EncodeSummary()
        self.bar = None
        self.pending_games: dict[int, list[GameRecord]] = {}
        self.pending_skips: list[SkipRecord] = []
        self.seen: dict[str, str] = {}  # hash -> first source this run
        self.last_skip_commit = time.monotonic()
        limit = options.max_games
        self.budget = None if limit is None else max(0, limit - writer.n_games)

    def room(self, in_flight: int, most: int) -> int:
        """How many more sources (up to `most`) may be dispatched with `in_flight` outstanding:
        each may become a game, and the store must not pass max_games."""
        if self.budget is None:
            return most
        return max(0, min(most, self.budget - self.summary.games - in_flight))

    def wants_more(self, in_flight: int) -> bool:
        return self.room(in_flight, 1) > 0

    def handle(self, outcome: Outcome) -> None:
        if outcome.present:
            self.summary.already_present += 1
        elif not self.options.allow_duplicates and outcome.hash in self.seen:
            self._skip(SkipRecord(outcome.source, f"duplicate: same content as {self.seen[outcome.hash]}", outcome.hash))
        elif outcome.game is not None:
            self.pending_games.setdefault(outcome.game.part, []).append(outcome.game)
            self.summary.games += 1
            self.summary.frames += outcome.game.info.frames
        elif outcome.skip is not None:
            self._skip(outcome.skip)
        if outcome.hash and not outcome.present:
            self.seen.setdefault(outcome.hash, outcome.source)
        self.close_part(outcome.closed_part)
        if self.pending_skips and time.monotonic() - self.last_skip_commit > SKIP_COMMIT_SECONDS:
            self._commit({})
        if self.bar is not None:
            self.bar.update(1)
            elapsed = max(self.bar.format_dict["elapsed"], 1e-9)
            self.bar.set_postfix(games=self.summary.games, skipped=len(self.summary.skipped), frames_per_s=f"{self.summary.frames / elapsed:,.0f}", refresh=False)

    def close_part(self, closed: tuple[int, int] | None) -> None:
        if closed is not None:
            self._commit({closed[0]: closed[1]})

    def commit_parts(self, closed: list[tuple[int, int] | None]) -> None:
        """Commit closed parts (part, frames) with their games in one commit, and the pending skips."""
        self._commit(dict(part for part in closed if part is not None))

    def _skip(self, record: SkipRecord) -> None:
        self.pending_skips.append(record)
        self.summary.skipped.append(record)

    def _commit(self, parts: dict[int, int]) -> None:
        games = [g for part in parts for g in self.pending_games.pop(part, [])]
        self.writer.commit(parts, games, self.pending_skips)
        self.pending_skips = []
        self.last_skip_commit = time.monotonic()


def _run_local(coordinator: Coordinator, sources: Iterator[ReplaySource]) -> None:
    """Encode every source: here, and in `workers - 1` helper processes when there are more."""
    writer, options = coordinator.writer, coordinator.options
    pool = _WorkerPool(options.workers - 1, writer, options) if options.workers > 1 else None
    encoder = ReplayEncoder(writer.path, options, writer.known_hashes, pool.allocate_part if pool else writer.allocate_part)
    exhausted = False
    try:
        while True:
            while pool and not exhausted and pool.has_room() and coordinator.wants_more(pool.in_flight):
                source = next(sources, None)
                exhausted = source is None
                if source is not None:
                    pool.submit(source)
            for outcome in pool.answers() if pool else ():
                coordinator.handle(outcome)
            in_flight = pool.in_flight if pool else 0
            source = None
            if not exhausted and coordinator.wants_more(in_flight):
                source = next(sources, None)
                exhausted = source is None
            if source is not None:
                coordinator.handle(encoder.process(source))  # this process works too between dispatches
            elif in_flight:
                coordinator.handle(pool.wait_answer())
            else:
                break
        coordinator.commit_parts([encoder.finish()] + (pool.finish() if pool else []))
    finally:
        if pool:
            pool.stop()
            writer.next_part = pool.next_part()


class _WorkerPool:
    """Helper processes, each running a ReplayEncoder over the sources it is handed."""

    def __init__(self, size: int, writer: StoreWriter, options: EncodeOptions):
        context = _mp_context()
        # Sources handed out and not yet answered, per helper. This process collects answers only
        # between its own replays, so finished ones still count: with 4 a helper idled ~17% of
        # the time on short replays; with 16, ~3%.
        self.capacity = 16 * size
        self.tasks, self.results = context.Queue(), context.Queue()
        self.counter = context.Value("q", writer.next_part)  # part ids, shared with this process
        self.in_flight = 0
        args = (self.tasks, self.results, writer.path, options, writer.known_hashes, self.counter)
        self.processes = [context.Process(target=_worker_main, args=args, daemon=True) for _ in range(size)]
        # Starting a process waits for the worker server's imports (~1 s): this process works meanwhile.
        self.starter = threading.Thread(target=lambda: [p.start() for p in self.processes], daemon=True)
        self.starter.start()

    def allocate_part(self) -> int:
        return _next_part(self.counter)

    def next_part(self) -> int:
        with self.counter.get_lock():
            return self.counter.value

    def has_room(self) -> bool:
        return self.in_flight < self.capacity

    def submit(self, source: ReplaySource) -> None:
        self.tasks.put(source)
        self.in_flight += 1

    def answers(self) -> list[Outcome]:
        """The outcomes ready now, without waiting."""
        ready = []
        while self.in_flight:
            try:
                ready.append(self._unwrap(self.results.get_nowait()))
            except queue.Empty:
                break
            self.in_flight -= 1
        return ready

    def wait_answer(self) -> Outcome:
        outcome = self._receive()
        self.in_flight -= 1
        return outcome

    def finish(self) -> list[tuple[int, int] | None]:
        """Stop the helpers after their work; return the part each had open."""
        for _ in self.processes:
            self.tasks.put(None)
        self.starter.join()
        closed = [self._receive() for _ in self.processes]
        for process in self.processes:
            process.join()
        return closed

    def stop(self) -> None:
        self.starter.join()
        for process in self.processes:
            if process.is_alive():
                process.terminate()

    def _receive(self):
        while True:
            try:
                return self._unwrap(self.results.get(timeout=1.0))
            except queue.Empty:
                dead = [p for p in self.processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"an encode worker died (exit code {dead[0].exitcode}); committed games are kept, re-run to resume") from None

    @staticmethod
    def _unwrap(message):
        if isinstance(message, str):  # a helper's traceback
            raise RuntimeError(f"an encode worker failed; committed games are kept, re-run to resume:\n{message}")
        return message


def _next_part(counter) -> int:
    with counter.get_lock():
        part = counter.value
        counter.value += 1
    return part


def _worker_main(tasks, results, store_path, options, known_hashes, counter) -> None:
    try:
        encoder = ReplayEncoder(store_path, options, known_hashes, lambda: _next_part(counter))
        for source in iter(tasks.get, None):
            results.put(encoder.process(source))
        results.put(encoder.finish())
    except BaseException:
        results.put(traceback.format_exc())


def _mp_context():
    """Worker processes start from a server that has imported this package once (not by fork:
    this process may run threads, zarr's among them)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["melee_encode.pipeline"])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return context


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="replay", dynamic_ncols=True, smoothing=0.1)
