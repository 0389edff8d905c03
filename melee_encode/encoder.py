"""The work every encode runner shares: one replay source -> one outcome, and outcomes -> commits.

`ReplayEncoder` runs wherever the work runs (this process, a helper process, a Dask task): it reads a
replay's bytes, hashes them (the content hash identifies a game across runs and archives), skips
games the store already holds, parses and encodes the rest, and appends them to its own part of the
store; a part is closed after `part_frames` frames. The `Coordinator` runs in the one process that
holds the store's writer lock: it turns outcomes into commits (a closed part with its games, the
skipped replays with their reasons), dedupes, counts toward `max_games` and draws the progress bar.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

from .config import EncodingConfig
from .encoding import encode_game
from .errors import ReplayError
from .filters import GameFilter
from .format import DEFAULT_CHUNK_FRAMES, DEFAULT_PART_FRAMES, GameRecord, SkipRecord
from .replay import one_line
from .salvage import read_salvaging
from .sources import UNREADABLE, OversizeError, ReplaySource, is_transient
from .storage import open_zarr
from .writer import PartWriter, StoreWriter

SKIP_COMMIT_SECONDS = 30.0  # skipped replays are committed at least this often


@dataclass
class EncodeOptions:
    """How to encode: the encoding, the filters, and how to run."""

    config: EncodingConfig = field(default_factory=EncodingConfig)
    filters: GameFilter = field(default_factory=GameFilter)
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
            self.bar.set_postfix(
                games=self.summary.games,
                skipped=len(self.summary.skipped),
                frames_per_s=f"{self.summary.frames / elapsed:,.0f}",
                refresh=False,
            )

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
