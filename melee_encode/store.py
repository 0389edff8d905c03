"""The Zarr store: layout, writing parts, committing games, and reading games back.

Layout (Zarr v3; every name below is readable with plain zarr):

    STORE/zarr.json           attributes["melee_encode"]: format, encoding config, column schema,
                              chunking, encode filters, and the committed counts and parts
    STORE/parts/NNNNNNNN/     one part: games appended back to back, written by one writer
        float      (n_float, frames) float32  chunked (n_float, chunk_frames), zstd
        int        (n_int, frames)   int16    same chunking
        state_age  (2, frames)       float32  same chunking
    STORE/games/<column>      the per-game table, one row per game (see GAME_COLUMNS)
    STORE/skipped/<column>    replays not encoded: source, reason, content hash

Arrays are feature-major (one row per column, chunked along frames): zstd over a column's run of
frames compresses ~2x better than over frame rows. Game i is `parts/{part[i]}/float[:, offset[i] :
offset[i] + length[i]]`, so reading a game or a frame range touches only the chunks it overlaps.

Commit protocol, which keeps the store readable after a kill -9 at any point: parts are written
completely, then the table rows that reference them are appended, and only then the root
attributes' counts are updated (one atomic write; on an object store, one PUT). Readers use the
first `games` / `skipped` rows; a writer that finds more rows, or parts that no committed row
references, removes them. Concurrent part writers never write the same object: each owns its part.

A store is a local path or an fsspec URL (see `storage`). One committer at a time: on local disk
an flock (`WriterLock`), on an object store a lease object (`lease.WriterLease`).
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.codecs import ZstdCodec

from . import __version__
from .config import EncodingConfig, Schema
from .encoding import EncodedGame, schema_of
from .replay import OPTIONAL_SOURCES, GameInfo
from .storage import exists, gather, is_url, list_names, local_path, open_zarr, sizes_under

FORMAT_VERSION = 1
ATTRS_KEY = "melee_encode"
DEFAULT_CHUNK_FRAMES = 32768
DEFAULT_PART_FRAMES = 1 << 22  # a writer starts a new part after ~4.2M frames
TABLE_CHUNK_ROWS = 16384
ZSTD_LEVEL = 1  # measured on real frames: 1.5% larger than level 3 and 20% faster to write
GROW_CHUNKS = 16  # part arrays grow this many chunks per resize (each resize rewrites metadata)
LOCK_NAME = ".writer.lock"

# Per-game table: column -> (dtype, trailing shape). "length" is the game's frame count.
GAME_COLUMNS: dict[str, tuple[object, tuple[int, ...]]] = {
    "hash": (str, ()),
    "source": (str, ()),
    "part": (np.int32, ()),
    "offset": (np.int64, ()),
    "length": (np.int32, ()),
    "rollback_frames_dropped": (np.int32, ()),
    "nonfinite_replaced": (np.int32, ()),
    "first_frame": (np.int32, ()),
    "ports": (np.uint8, (2,)),
    "characters": (np.uint8, (2,)),
    "player_types": (str, ()),
    "stage": (np.int16, ()),
    "end_method": (np.int8, ()),
    "is_pal": (np.bool_, ()),
    "slippi_version": (str, ()),
    "fields_missing": (np.uint16, ()),  # bit i set: OPTIONAL_SOURCES[i] is missing
    "start_time": (str, ()),
    "match_id": (str, ()),  # one game's key in both players' replays (replay.match_identity); "" if none
    "salvaged": (str, ()),  # what was repaired to read the replay (salvage); "" when it was whole
}
SKIPPED_COLUMNS: dict[str, tuple[object, tuple[int, ...]]] = {
    "source": (str, ()),
    "reason": (str, ()),
    "hash": (str, ()),
}
ARRAYS = ("float", "int", "state_age")


class StoreError(Exception):
    """A store that cannot be opened or written as asked; the message says why."""


@dataclass
class GameRecord:
    """One row of the per-game table."""

    hash: str
    source: str
    part: int
    offset: int
    info: GameInfo
    nonfinite_replaced: int = 0

    def row(self) -> dict:
        info = self.info
        return {
            "hash": self.hash,
            "source": self.source,
            "part": self.part,
            "offset": self.offset,
            "length": info.frames,
            "rollback_frames_dropped": info.rollback_frames_dropped,
            "nonfinite_replaced": self.nonfinite_replaced,
            "first_frame": info.first_frame,
            "ports": info.ports,
            "characters": info.characters,
            "player_types": ",".join(info.player_types),
            "stage": info.stage,
            "end_method": info.end_method,
            "is_pal": info.is_pal,
            "slippi_version": info.slippi_version,
            "fields_missing": fields_missing_mask(info.fields_missing),
            "start_time": info.start_time,
            "match_id": info.match_id,
            "salvaged": info.salvaged,
        }


@dataclass
class SkipRecord:
    """A replay that was not encoded, and the one-line reason."""

    source: str
    reason: str
    hash: str = ""


def fields_missing_mask(names: Iterable[str]) -> int:
    return sum(1 << OPTIONAL_SOURCES.index(name) for name in names)


def fields_missing_names(mask: int) -> list[str]:
    return [name for i, name in enumerate(OPTIONAL_SOURCES) if mask & (1 << i)]


def part_name(part: int) -> str:
    return f"{part:08d}"


# ---------------------------------------------------------------- reading


class Store:
    """A read view of an encoded store: its schema, per-game table and frames."""

    def __init__(self, root: zarr.Group, path: str, storage_options: dict | None = None):
        self.root = root
        self.path = path
        self.storage_options = dict(storage_options or {})
        attrs = root.attrs.asdict().get(ATTRS_KEY)
        if attrs is None:
            raise StoreError(f"{path} is a zarr group but not a melee-encode store")
        if attrs["format"] > FORMAT_VERSION:
            raise StoreError(f"{path} has store format {attrs['format']}; this melee-encode reads up to {FORMAT_VERSION}")
        self.attrs = attrs
        self.config = EncodingConfig.from_dict(attrs["encoding"])
        self.schema = Schema.from_dict(attrs["schema"])
        self.chunk_frames: int = attrs["chunk_frames"]
        self.n_games: int = attrs["games"]
        self.n_skipped: int = attrs["skipped"]
        self.parts: dict[int, int] = {int(k): v for k, v in attrs["parts"].items()}  # part -> frames
        self._games: dict[str, np.ndarray] | None = None
        self._part_arrays: dict[int, tuple[zarr.Array, zarr.Array, zarr.Array]] = {}

    def __len__(self) -> int:
        return self.n_games

    @property
    def n_frames(self) -> int:
        return sum(self.parts.values())

    @property
    def games(self) -> dict[str, np.ndarray]:
        """The committed per-game table: column name -> array with one row per game."""
        if self._games is None:
            self._games = read_table(self.root["games"], GAME_COLUMNS, self.n_games)
        return self._games

    @property
    def skipped(self) -> list[SkipRecord]:
        table = read_table(self.root["skipped"], SKIPPED_COLUMNS, self.n_skipped)
        return [SkipRecord(str(s), str(r), str(h)) for s, r, h in zip(table["source"], table["reason"], table["hash"])]

    def part_arrays(self, part: int) -> tuple[zarr.Array, zarr.Array, zarr.Array]:
        """The (float, int, state_age) arrays of one part, each (columns, frames)."""
        if part not in self._part_arrays:
            arrays = table_arrays(self.root["parts"][part_name(part)])
            self._part_arrays[part] = tuple(arrays[name] for name in ARRAYS)
        return self._part_arrays[part]

    def frames(self, game: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames [start, stop) of one game as (floats, ints, state_age), each (frames, columns)."""
        length = int(self.games["length"][game])
        stop = length if stop is None else min(stop, length)
        if not 0 <= start <= stop:
            raise IndexError(f"frame range [{start}, {stop}) outside game {game} of {length} frames")
        offset = int(self.games["offset"][game])
        arrays = self.part_arrays(int(self.games["part"][game]))
        values = gather(*(a.async_array.getitem((slice(None), slice(offset + start, offset + stop))) for a in arrays))
        return tuple(np.ascontiguousarray(v.T) for v in values)

    def game(self, index: int) -> EncodedGame:
        """One whole game, read back as the `EncodedGame` the encoder produced."""
        floats, ints, state_age = self.frames(index)
        row = {name: values[index] for name, values in self.games.items()}
        return EncodedGame(game_info(row), self.config, floats, ints, state_age, int(row["nonfinite_replaced"]))

    def game_rows(self) -> list[dict]:
        """The per-game table as one JSON-ready dict per game."""
        return [table_row_json({name: values[i] for name, values in self.games.items()}) for i in range(self.n_games)]

    def info(self) -> dict:
        """Summary figures: games, frames, bytes on disk and per frame, skipped replays, encoding."""
        sizes = sizes_under(self.path, self.storage_options)
        disk = sum(sizes.values())
        frames = self.n_frames
        return {
            "path": self.path,
            "games": self.n_games,
            "frames": frames,
            "bytes_on_disk": disk,
            "bytes_per_frame": (disk / frames) if frames else None,
            "data_bytes_per_frame": (self.data_bytes(sizes) / frames) if frames else None,
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "encoding": self.attrs["encoding"],
            "float_columns": self.schema.n_float,
            "int_columns": self.schema.n_int,
            "chunk_frames": self.chunk_frames,
            "parts": len(self.parts),
            "filters": self.attrs["filters"],
        }

    def data_bytes(self, sizes: dict[str, int] | None = None) -> int:
        """Compressed bytes of the float, int and state-age arrays of committed parts (from `sizes`,
        the store's `sizes_under` listing, when the caller has it)."""
        sizes = sizes_under(self.path, self.storage_options) if sizes is None else sizes
        committed = {f"parts/{part_name(p)}" for p in self.parts}
        return sum(size for name, size in sizes.items() if "/".join(name.split("/", 2)[:2]) in committed)


def open_store(path: str | os.PathLike, storage_options: dict | None = None) -> Store:
    """Open an encoded store for reading: a local path or an fsspec URL (see `storage`)."""
    path = str(path)
    if not exists(f"{path.rstrip('/')}/zarr.json", storage_options):
        raise StoreError(f"no store at {path}")
    return Store(open_zarr(path, "r", storage_options), path, storage_options)


def read_table(group: zarr.Group, columns: dict, rows: int) -> dict[str, np.ndarray]:
    """The first `rows` rows of a table's columns, all columns fetched at once."""
    arrays = table_arrays(group)
    values = gather(*(arrays[name].async_array.getitem(slice(0, rows)) for name in columns))
    return dict(zip(columns, values))


def table_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """A table's column arrays, their metadata fetched at once (one listing, then concurrent reads)."""
    return dict(group.arrays())


def game_info(row: dict) -> GameInfo:
    """The `GameInfo` of one table row."""
    return GameInfo(
        slippi_version=str(row["slippi_version"]),
        stage=int(row["stage"]),
        is_pal=bool(row["is_pal"]),
        end_method=int(row["end_method"]),
        ports=tuple(int(p) for p in row["ports"]),
        characters=tuple(int(c) for c in row["characters"]),
        player_types=tuple(str(row["player_types"]).split(",")),
        frames=int(row["length"]),
        rollback_frames_dropped=int(row["rollback_frames_dropped"]),
        first_frame=int(row["first_frame"]),
        fields_missing=tuple(fields_missing_names(int(row["fields_missing"]))),
        start_time=str(row["start_time"]),
        match_id=str(row["match_id"]),
        salvaged=str(row["salvaged"]),
    )


def table_row_json(row: dict) -> dict:
    """A table row as plain JSON values, with `frames` for the length and named missing fields."""
    out = {}
    for name, value in row.items():
        value = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
        out[name] = value
    out["frames"] = out["length"]
    out["fields_missing"] = fields_missing_names(out["fields_missing"])
    return out


# ---------------------------------------------------------------- writing


class PartWriter:
    """Appends encoded games to one part, writing whole chunks; memory is one chunk buffer.

    Several PartWriters (in different processes) may write one store at once, each its own part.
    """

    def __init__(self, root: zarr.Group, part: int, schema: Schema, chunk_frames: int):
        self.part = part
        self.chunk_frames = chunk_frames
        # overwrite: a part left by a killed writer or a failed task's attempt is recreated empty.
        group = root.require_group("parts").create_group(part_name(part), overwrite=True)
        widths = (schema.n_float, schema.n_int, len(schema.state_age_columns))
        dtypes = (np.float32, np.int16, np.float32)
        self.arrays = gather(
            *(
                zarr_async.create_array(
                    group.store,
                    name=f"{group.path}/{name}",
                    shape=(width, 0),
                    chunks=(width, chunk_frames),
                    dtype=dtype,
                    fill_value=0,
                    compressors=ZstdCodec(level=ZSTD_LEVEL),
                    config={"write_empty_chunks": True},  # skips zarr's costly all-fill-value check
                )
                for name, width, dtype in zip(ARRAYS, widths, dtypes)
            )
        )
        self.buffers = [np.zeros((width, chunk_frames), dtype) for width, dtype in zip(widths, dtypes)]
        self.written = 0  # frames already in the arrays (a multiple of chunk_frames until closed)
        self.filled = 0  # frames in the buffers
        self.capacity = 0  # the arrays' length: grown GROW_CHUNKS at a time, trimmed on close

    @property
    def frames(self) -> int:
        return self.written + self.filled

    def append(self, game: EncodedGame) -> int:
        """Append one game; return its frame offset in this part."""
        offset = self.frames
        sources = (game.floats.T, game.ints.T, game.state_age.T)  # (columns, frames) each
        start = 0
        while start < game.frames:
            take = min(self.chunk_frames - self.filled, game.frames - start)
            for buffer, source in zip(self.buffers, sources):
                buffer[:, self.filled : self.filled + take] = source[:, start : start + take]
            self.filled += take
            start += take
            if self.filled == self.chunk_frames:
                self._flush()
        return offset

    def close(self) -> int:
        """Write the last, partial chunk and trim the arrays; return the part's frame count."""
        if self.filled:
            self._flush()
        self._resize(self.written)
        return self.written

    def _flush(self) -> None:
        end = self.written + self.filled
        if end > self.capacity:
            self._resize(self.capacity + GROW_CHUNKS * self.chunk_frames)
        gather(*(array.setitem((slice(None), slice(self.written, end)), buffer[:, : self.filled]) for array, buffer in zip(self.arrays, self.buffers)))
        self.written, self.filled = end, 0

    def _resize(self, frames: int) -> None:
        # Only ever trimmed past the written frames, where no chunk exists: nothing to delete (on an
        # object store, zarr would otherwise send one delete request per chunk of the trimmed range).
        gather(*(array.resize((array.shape[0], frames), delete_outside_chunks=False) for array in self.arrays))
        self.capacity = frames


@dataclass
class Filters:
    """Encode-time filters; a store remembers them so that a resumed encode applies the same."""

    end_methods: tuple[int, ...] = ()  # empty: any
    characters: tuple[int, ...] = ()  # internal ids; a game passes if either player's matches
    stages: tuple[int, ...] = ()
    min_frames: int = 60

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "Filters":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def reject_reason(self, info: GameInfo) -> str | None:
        """Why a game is filtered out, or None if it passes."""
        if info.frames < self.min_frames:
            return f"too short: {info.frames} frames < {self.min_frames}"
        if self.end_methods and info.end_method not in self.end_methods:
            return f"end method {info.end_method} not in {list(self.end_methods)}"
        if self.stages and info.stage not in self.stages:
            return f"stage {info.stage} not in {list(self.stages)}"
        if self.characters and not set(info.characters) & set(self.characters):
            return f"characters {list(info.characters)} not in {list(self.characters)}"
        return None


class StoreWriter:
    """The single committer of a store: holds the writer lock, allocates parts, commits games.

    Opening recovers from an interrupted encode: rows past the committed counts and parts no
    committed row references are removed, so the next commit continues cleanly.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: EncodingConfig | None = None,
        filters: Filters | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        storage_options: dict | None = None,
    ):
        self.path = str(path)
        self.storage_options = dict(storage_options or {})
        self._lock = writer_lock(self.path, self.storage_options)
        try:
            self.root = self._open_or_create(config or EncodingConfig(), filters or Filters(), chunk_frames)
            self._tables = {table: table_arrays(self.root[table]) for table in ("games", "skipped")}
            removed = self._recover()
        except BaseException:
            self._lock.release()
            raise
        store = Store(self.root, self.path, self.storage_options)
        self.config, self.schema, self.chunk_frames = store.config, store.schema, store.chunk_frames
        self.filters = Filters.from_dict(store.attrs["filters"])
        self.attrs = store.attrs
        skipped = store.skipped if store.n_skipped else []
        self.known_hashes = {s.hash for s in skipped if s.hash}
        if store.n_games:
            self.known_hashes.update(store.games["hash"].tolist())
        self.known_sources = {s.source for s in skipped if not s.hash}
        # New parts start past every part found, committed or not: a worker of an interrupted run
        # (a Dask task whose client was killed) may still be finishing one of the removed parts.
        self.next_part = max([*store.parts, *removed], default=-1) + 1

    @property
    def n_games(self) -> int:
        return self.attrs["games"]

    def allocate_part(self) -> int:
        part, self.next_part = self.next_part, self.next_part + 1
        return part

    def commit(self, parts: dict[int, int], games: list[GameRecord], skipped: list[SkipRecord]) -> None:
        """Make finished parts (part -> frames), their games and new skips visible, atomically."""
        if not (parts or games or skipped):
            return
        self._lock.check()  # a writer that lost its lease must not commit over its successor
        gather(
            *_append_rows(self._tables["games"], GAME_COLUMNS, self.attrs["games"], [g.row() for g in games]),
            *_append_rows(self._tables["skipped"], SKIPPED_COLUMNS, self.attrs["skipped"], [dataclasses.asdict(s) for s in skipped]),
        )
        attrs = dict(self.attrs)
        attrs["games"] += len(games)
        attrs["skipped"] += len(skipped)
        attrs["parts"] = {**attrs["parts"], **{str(p): int(f) for p, f in parts.items()}}
        attrs["updated"] = utc_timestamp()
        self.root.attrs[ATTRS_KEY] = attrs  # the commit point
        self.attrs = attrs
        self.known_hashes.update(g.hash for g in games)
        self.known_hashes.update(s.hash for s in skipped if s.hash)
        self.known_sources.update(s.source for s in skipped if not s.hash)

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_or_create(self, config: EncodingConfig, filters: Filters, chunk_frames: int) -> zarr.Group:
        if exists(f"{self.path.rstrip('/')}/zarr.json", self.storage_options):
            root = open_zarr(self.path, "r+", self.storage_options)
            attrs = root.attrs.asdict().get(ATTRS_KEY)
            if attrs is None:
                raise StoreError(f"{self.path} is a zarr group but not a melee-encode store")
            _check_same(self.path, "encoding", attrs["encoding"], config.to_dict())
            _check_same(self.path, "filters", attrs["filters"], filters.to_dict())
            return root
        if {name for name in list_names(self.path, self.storage_options) if not _is_lock(name)}:
            raise StoreError(f"{self.path} exists and is not a melee-encode store; choose a new or empty folder")
        root = open_zarr(self.path, "a", self.storage_options)
        schema = schema_of(config)
        root.create_group("parts")
        gather(*_create_table(root.create_group("games"), GAME_COLUMNS), *_create_table(root.create_group("skipped"), SKIPPED_COLUMNS))
        root.attrs[ATTRS_KEY] = {
            "format": FORMAT_VERSION,
            "version": __version__,
            "created": utc_timestamp(),
            "updated": utc_timestamp(),
            "encoding": config.to_dict(),
            "schema": schema.to_dict(),
            "chunk_frames": chunk_frames,
            "filters": filters.to_dict(),
            "fields_missing_bits": list(OPTIONAL_SOURCES),
            "hash": "xxh3_128 of the decompressed .slp bytes",
            "games": 0,
            "skipped": 0,
            "parts": {},
        }
        return root

    def _recover(self) -> list[int]:
        """Cut the tables back to the committed rows and remove uncommitted parts; return their ids."""
        attrs = self.root.attrs[ATTRS_KEY]
        gather(*_truncate_table(self._tables["games"], attrs["games"]), *_truncate_table(self._tables["skipped"], attrs["skipped"]))
        return self.remove_uncommitted_parts()

    def remove_uncommitted_parts(self) -> list[int]:
        """Delete parts that no commit references (left by a killed writer, or a failed task's
        attempt); return their ids."""
        committed = set(self.root.attrs[ATTRS_KEY]["parts"])
        removed = [int(name) for name in self.root["parts"].group_keys() if str(int(name)) not in committed]
        for part in removed:
            del self.root["parts"][part_name(part)]
        return removed


def _check_same(path: str, what: str, stored: dict, requested: dict) -> None:
    if stored != requested:
        diff = ", ".join(f"{k}: store has {stored.get(k)!r}, asked {requested.get(k)!r}" for k in sorted(set(stored) | set(requested)) if stored.get(k) != requested.get(k))
        raise StoreError(f"{path} was encoded with other {what} ({diff}); use the same options or a new store")


def _create_table(group: zarr.Group, columns: dict) -> list:
    """Coroutines creating a table's column arrays, empty."""
    return [
        zarr_async.create_array(
            group.store,
            name=f"{group.path}/{name}",
            shape=(0, *trailing),
            chunks=(TABLE_CHUNK_ROWS, *trailing),
            dtype=dtype,
            compressors=ZstdCodec(level=ZSTD_LEVEL),
            config={"write_empty_chunks": True},
        )
        for name, (dtype, trailing) in columns.items()
    ]


def _append_rows(arrays: dict[str, zarr.Array], columns: dict, committed: int, rows: list[dict]) -> list:
    """Coroutines appending `rows` after the first `committed` rows of a table, one per column."""
    if not rows:
        return []
    appends = []
    for name, (dtype, _) in columns.items():
        values = np.array([row[name] for row in rows], dtype=object if dtype is str else dtype)
        appends.append(_append_column(arrays[name].async_array, committed, values.astype(str) if dtype is str else values))
    return appends


async def _append_column(array, committed: int, values: np.ndarray) -> None:
    await array.resize((committed + len(values), *values.shape[1:]))
    await array.setitem(slice(committed, None), values)


def _truncate_table(arrays: dict[str, zarr.Array], rows: int) -> list:
    """Coroutines cutting a table's columns back to `rows` rows, for those longer."""
    return [array.async_array.resize((rows, *array.shape[1:])) for array in arrays.values() if array.shape[0] != rows]


def utc_timestamp() -> str:
    """Now, in UTC, as ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def writer_lock(path: str, storage_options: dict):
    """The exclusive writer lock of a store: an flock on local disk, a lease on an object store."""
    if not is_url(path):
        return WriterLock(local_path(path))
    from .lease import WriterLease

    return WriterLease(path, storage_options)


def _is_lock(name: str) -> bool:
    from .lease import LEASE_PREFIX

    return name == LOCK_NAME or name.startswith(LEASE_PREFIX)


class WriterLock:
    """An exclusive, crash-safe writer lock on a local store: an flock on STORE/.writer.lock.

    The kernel drops the lock when its process dies (kill -9 included), so a resumed encode never
    finds a stale lock, while a second live writer is refused with the holder's pid and host.
    """

    def __init__(self, path: str):
        Path(path).mkdir(parents=True, exist_ok=True)
        self.file = open(os.path.join(path, LOCK_NAME), "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise StoreError(f"{path} is being written by {holder}; refusing a second writer") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_timestamp()}))
        self.file.flush()

    def check(self) -> None:
        """Nothing to check: the kernel holds an flock for as long as this process lives."""

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
