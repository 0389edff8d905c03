"""The store's format: its names, table columns and row records, shared by the reader and the writers.

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
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .replay import OPTIONAL_SOURCES, GameInfo

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


def default_column(spec: tuple[object, tuple[int, ...]], rows: int) -> np.ndarray:
    """`rows` rows of a table column's default value ("" or 0): what a store written before the
    column existed holds in it."""
    dtype, trailing = spec
    return np.full((rows, *trailing), "" if dtype is str else 0, dtype=str if dtype is str else dtype)


def fields_missing_mask(names: Iterable[str]) -> int:
    return sum(1 << OPTIONAL_SOURCES.index(name) for name in names)


def fields_missing_names(mask: int) -> list[str]:
    return [name for i, name in enumerate(OPTIONAL_SOURCES) if mask & (1 << i)]


def part_name(part: int) -> str:
    return f"{part:08d}"


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


def utc_timestamp() -> str:
    """Now, in UTC, as ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
