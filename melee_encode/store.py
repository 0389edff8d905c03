"""Reading a store: the read view of its schema, per-game table, frames and stored chunks.

See `format` for the layout. `Store` reads only what its root attributes say is committed, so a
store being written (or left by a killed writer) reads consistently. Frames come back two ways:
`read_frames` for a range of one game, and `read_chunks` for whole chunks of a part's arrays, the
unit the training data pipeline decodes. How a chunk is found and decoded (its key, its codecs)
is known here only: `read_chunks` takes a fast path for the zstd chunks melee-encode writes, with
`read_chunks_zarr`, zarr's own read path, as its reference twin.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.core.buffer import default_buffer_prototype

from .config import EncodingConfig, Schema
from .encoding import EncodedGame
from .errors import StoreError
from .format import (
    ARRAYS,
    ATTRS_KEY,
    FORMAT_VERSION,
    GAME_COLUMNS,
    SKIPPED_COLUMNS,
    SkipRecord,
    default_column,
    game_info,
    part_name,
    table_row_json,
)
from .storage import exists, gather, is_url, local_path, open_zarr, sizes_under

ChunkKey = tuple[int, str, int]  # (part, array name in format.ARRAYS, chunk index along frames)
_ZSTD = Zstd()


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

    def read_frames(self, game: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        floats, ints, state_age = self.read_frames(index)
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

    # ------------------------------------------------------------ whole chunks

    def read_chunks(
        self, keys: list[ChunkKey], outs: list[np.ndarray], stored: dict[ChunkKey, np.ndarray | None] | None = None
    ) -> list[np.ndarray]:
        """Chunks decoded into their buffers, each `out` (columns, chunk_frames), and returned.

        `stored` may hold chunks' stored bytes fetched earlier (`stored_chunks`, or a cache of them);
        the others are fetched now, all at once. The frames past a part's end read as the fill value.
        """
        stored = stored or {}
        missing = [key for key in keys if key not in stored]
        if missing:
            stored = {**stored, **self.stored_chunks(missing)}
        return [self._decode(key, stored[key], out) if key in stored else self._read_zarr(key, out) for key, out in zip(keys, outs)]

    def read_chunks_zarr(self, keys: list[ChunkKey], outs: list[np.ndarray]) -> list[np.ndarray]:
        """The reference twin of `read_chunks`: the same chunks through zarr's own read path."""
        return [self._read_zarr(key, out) for key, out in zip(keys, outs)]

    def stored_chunks(self, keys: list[ChunkKey]) -> dict[ChunkKey, np.ndarray | None]:
        """The stored (compressed) bytes of the chunks `read_chunks` decodes itself, all requested at
        once; None for a chunk never written. Chunks of other codecs are left out."""
        fast = [key for key in keys if _plain_zstd(self._array(key))]
        if not is_url(self.path):  # plain file reads: zarr's event loop costs twice as much on local disk
            return {key: _read_file(os.path.join(local_path(self.path), self._chunk_key(key))) for key in fast}

        async def get(key: ChunkKey):
            array = self._array(key)
            return await (array.store_path / array.metadata.encode_chunk_key((0, key[2]))).get(prototype=default_buffer_prototype())

        found = gather(*(get(key) for key in fast))
        return {key: None if data is None else data.as_numpy_array() for key, data in zip(fast, found)}

    def _chunk_key(self, key: ChunkKey) -> str:
        """The chunk's object name in the store, e.g. "parts/00000003/float/c/0/12"."""
        array = self._array(key)
        return f"{array.path}/{array.metadata.encode_chunk_key((0, key[2]))}"

    def _array(self, key: ChunkKey) -> zarr.Array:
        part, name, _ = key
        return self.part_arrays(part)[ARRAYS.index(name)]

    def _decode(self, key: ChunkKey, stored: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """Fast path: the stored bytes are zstd over the little-endian (columns, chunk) array."""
        if stored is None:  # never written: the fill value
            out[:] = self._array(key).metadata.fill_value
        else:
            _ZSTD.decode(stored, out=out)
        return out

    def _read_zarr(self, key: ChunkKey, out: np.ndarray) -> np.ndarray:
        array, c = self._array(key), key[2]
        chunk = out.shape[1]
        values = array[:, c * chunk : (c + 1) * chunk]
        out[:, : values.shape[1]] = values
        out[:, values.shape[1] :] = array.metadata.fill_value
        return out


def _read_file(path: str) -> np.ndarray | None:
    """A local chunk file's bytes, or None for a chunk never written."""
    try:
        with open(path, "rb") as handle:
            return np.frombuffer(handle.read(), np.uint8)
    except FileNotFoundError:
        return None


def _plain_zstd(array: zarr.Array) -> bool:
    """True if the array's chunks are zstd over little-endian bytes (what melee-encode writes)."""
    codecs = array.metadata.codecs
    little_endian = len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and codecs[0].endian in (None, Endian.little)
    return little_endian and isinstance(codecs[1], ZstdCodec) and sys.byteorder == "little"


def open_store(path: str | os.PathLike, storage_options: dict | None = None) -> Store:
    """Open an encoded store for reading: a local path or an fsspec URL (see `storage`)."""
    path = str(path)
    if not exists(f"{path.rstrip('/')}/zarr.json", storage_options):
        raise StoreError(f"no store at {path}")
    return Store(open_zarr(path, "r", storage_options), path, storage_options)


def read_table(group: zarr.Group, columns: dict, rows: int) -> dict[str, np.ndarray]:
    """The first `rows` rows of a table's columns, all columns fetched at once. A column added after
    the store was written reads as its default (format.default_column)."""
    arrays = table_arrays(group)
    present = [name for name in columns if name in arrays]
    values = dict(zip(present, gather(*(arrays[name].async_array.getitem(slice(0, rows)) for name in present))))
    return {name: values[name] if name in values else default_column(columns[name], rows) for name in columns}


def table_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """A table's column arrays, their metadata fetched at once (one listing, then concurrent reads)."""
    return dict(group.arrays())
