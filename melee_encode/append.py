"""Writing games that are already encoded: `EncodedGame` arrays and their identity in, commits out.

The encoder's path parses replays (`encoder`); this one takes games as they are (read back from
another store, or encoded earlier) with the identity each is stored under (content hash and
source), so a store can be copied, merged or grown at the speed of compression and disk: the scale
benchmark builds a run-card-sized store this way. It is the same store with the same invariants:
one game per content hash (a hash the store holds, or was given earlier in this run, is passed
over), parts of `part_frames` frames written whole by a `PartWriter` before the commit that
references them (`StoreWriter.commit`, one per closed part), and an interrupted run leaves only
committed parts: adding the same games again resumes it.
"""

from __future__ import annotations

import os
import re

from .config import EncodingConfig
from .encoding import EncodedGame
from .errors import StoreError
from .filters import GameFilter
from .format import DEFAULT_CHUNK_FRAMES, DEFAULT_PART_FRAMES, GameRecord
from .writer import PartWriter, StoreWriter

_HASH = re.compile(r"[0-9a-f]{32}")  # xxh3_128 in hex, as `encoder.content_hash` writes it


class GameAppender:
    """Appends encoded games to a store (created if absent), committing each part once it is full.

    Use as a context manager: leaving the block normally commits the open part; leaving it with an
    exception does not (the part is removed when the store is next opened for writing, and its
    games are added again by the next run).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: EncodingConfig | None = None,
        filters: GameFilter | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        part_frames: int = DEFAULT_PART_FRAMES,
        storage_options: dict | None = None,
    ):
        self.store = StoreWriter(path, config, filters, chunk_frames, storage_options)
        self.part_frames = part_frames
        self.part: PartWriter | None = None
        self.records: list[GameRecord] = []  # the open part's games
        self.hashes: set[str] = set()  # hashes given in this run, not yet committed
        self.games = self.frames = 0  # added by this appender

    def add(self, game: EncodedGame, hash: str, source: str) -> bool:
        """Append one game under its content hash and source; False if the store already holds the hash."""
        if not _HASH.fullmatch(hash):
            raise StoreError(f"{source}: content hash {hash!r} is not 32 lowercase hex digits (xxh3_128)")
        if game.config != self.store.config:
            raise StoreError(f"{source}: encoded with {game.config.to_dict()}, the store holds {self.store.config.to_dict()}")
        if hash in self.store.known_hashes or hash in self.hashes:
            return False
        if self.part is None:
            self.part = PartWriter(self.store.root, self.store.allocate_part(), self.store.schema, self.store.chunk_frames)
        offset = self.part.append(game)
        self.records.append(GameRecord(hash, source, self.part.part, offset, game.info, game.nonfinite_replaced))
        self.hashes.add(hash)
        self.games += 1
        self.frames += game.frames
        if self.part.frames >= self.part_frames:
            self.commit()
        return True

    def commit(self) -> None:
        """Close the open part (if any) and commit it with its games."""
        if self.part is None:
            return
        part, frames = self.part.part, self.part.close()
        self.store.commit({part: frames}, self.records, [])
        self.part, self.records = None, []
        self.hashes.clear()  # committed: the store's known hashes hold them now

    def close(self) -> None:
        """Commit the open part and release the store's writer lock."""
        try:
            self.commit()
        finally:
            self.store.close()

    def __enter__(self) -> GameAppender:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.store.close()
