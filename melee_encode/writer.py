"""Writing a store: parts of encoded games, and the commits that make them visible.

Commit protocol, which keeps the store readable after a kill -9 at any point: parts are written
completely (`PartWriter`), then the table rows that reference them are appended, and only then the
root attributes' counts are updated (one atomic write; on an object store, one PUT). Readers use the
first `games` / `skipped` rows; a writer that finds more rows, or parts that no committed row
references, removes them (`StoreWriter`, on opening). Concurrent part writers never write the same
object: each owns its part. One committer at a time: `lock.writer_lock`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.codecs import ZstdCodec

from . import __version__
from .config import EncodingConfig, Schema
from .encoding import EncodedGame, schema_of
from .errors import StoreError
from .filters import GameFilter
from .format import (
    ARRAYS,
    ATTRS_KEY,
    DEFAULT_CHUNK_FRAMES,
    FORMAT_VERSION,
    GAME_COLUMNS,
    GROW_CHUNKS,
    SKIPPED_COLUMNS,
    TABLE_CHUNK_ROWS,
    ZSTD_LEVEL,
    GameRecord,
    SkipRecord,
    default_column,
    part_name,
    utc_timestamp,
)
from .lock import is_lock_name, writer_lock
from .replay import OPTIONAL_SOURCES
from .storage import exists, gather, list_names, open_zarr
from .store import Store, table_arrays


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
        gather(
            *(
                array.setitem((slice(None), slice(self.written, end)), buffer[:, : self.filled])
                for array, buffer in zip(self.arrays, self.buffers)
            )
        )
        self.written, self.filled = end, 0

    def _resize(self, frames: int) -> None:
        # Only ever trimmed past the written frames, where no chunk exists: nothing to delete (on an
        # object store, zarr would otherwise send one delete request per chunk of the trimmed range).
        gather(*(array.resize((array.shape[0], frames), delete_outside_chunks=False) for array in self.arrays))
        self.capacity = frames


class StoreWriter:
    """The single committer of a store: holds the writer lock, allocates parts, commits games.

    Opening recovers from an interrupted encode: rows past the committed counts and parts no
    committed row references are removed, so the next commit continues cleanly.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: EncodingConfig | None = None,
        filters: GameFilter | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        storage_options: dict | None = None,
    ):
        self.path = str(path)
        self.storage_options = dict(storage_options or {})
        self._lock = writer_lock(self.path, self.storage_options)
        try:
            self.root = self._open_or_create(config or EncodingConfig(), filters or GameFilter(), chunk_frames)
            self._tables = {
                table: self._complete_table(table, columns) for table, columns in (("games", GAME_COLUMNS), ("skipped", SKIPPED_COLUMNS))
            }
            removed = self._recover()
        except BaseException:
            self._lock.release()
            raise
        store = Store(self.root, self.path, self.storage_options)
        self.config, self.schema, self.chunk_frames = store.config, store.schema, store.chunk_frames
        self.filters = GameFilter.from_dict(store.attrs["filters"])
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

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_or_create(self, config: EncodingConfig, filters: GameFilter, chunk_frames: int) -> zarr.Group:
        if exists(f"{self.path.rstrip('/')}/zarr.json", self.storage_options):
            root = open_zarr(self.path, "r+", self.storage_options)
            attrs = root.attrs.asdict().get(ATTRS_KEY)
            if attrs is None:
                raise StoreError(f"{self.path} is a zarr group but not a melee-encode store")
            _check_same(self.path, "encoding", attrs["encoding"], config.to_dict())
            _check_same(self.path, "filters", GameFilter.from_dict(attrs["filters"]).to_dict(), filters.to_dict())
            return root
        if {name for name in list_names(self.path, self.storage_options) if not is_lock_name(name)}:
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

    def _complete_table(self, table: str, columns: dict) -> dict[str, zarr.Array]:
        """A table's column arrays, with the columns this version added since the store was written
        created and filled with their default for the committed rows."""
        group = self.root[table]
        arrays = table_arrays(group)
        missing = {name: spec for name, spec in columns.items() if name not in arrays}
        if missing:
            rows = self.root.attrs[ATTRS_KEY][table]
            created = gather(*_create_table(group, missing))
            gather(*(_append_column(array, 0, default_column(missing[name], rows)) for name, array in zip(missing, created)))
            arrays = table_arrays(group)
        return arrays

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
        diff = ", ".join(
            f"{k}: store has {stored.get(k)!r}, asked {requested.get(k)!r}"
            for k in sorted(set(stored) | set(requested))
            if stored.get(k) != requested.get(k)
        )
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
