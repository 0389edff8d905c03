"""Encoding: a `RawGame`'s fields into the float, int and state-age arrays of an `EncodingConfig`.

Each column's source (a raw field, or a derived one such as a state-flag bit) is looked up once per
player, all sources are stacked in one call into a column-major buffer (one contiguous row per
column, the layout the store compresses best), and scales and offsets are applied to the whole
buffer at once: a few vectorized passes per game, no Python loop over frames. Non-finite inputs
(peppi's NaN hitstun) are replaced by 0 here, once for every consumer, and counted: in exactly the
rows whose column says its source may be non-finite (`FloatColumn.may_be_nonfinite`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .config import STATE_FLAG_BITS, EncodingConfig, Schema
from .replay import OPTIONAL_SOURCES, GameInfo, ItemFrames, RawGame, read_replay

HITSTUN_MAX = 200.0
ITEM_SLOTS = 15  # the item count saturates at this many active items


@dataclass
class EncodedGame:
    """One encoded game. Arrays are (frames, columns) views over column-major memory."""

    info: GameInfo
    config: EncodingConfig
    floats: np.ndarray  # (frames, n_float) float32
    ints: np.ndarray  # (frames, n_int) int16
    state_age: np.ndarray  # (frames, 2) float32, raw frames in the current action
    nonfinite_replaced: int = 0  # NaN/inf input values written as 0

    @property
    def frames(self) -> int:
        return self.floats.shape[0]

    @property
    def schema(self) -> Schema:
        return schema_of(self.config)


@functools.cache
def schema_of(config: EncodingConfig) -> Schema:
    """The (cached) schema of a config."""
    return config.schema()


def sources_used(config: EncodingConfig) -> tuple[str, ...]:
    """The optional replay fields an encoding reads: a game missing one of them has zero columns."""
    return tuple(sorted(schema_of(config).sources() & set(OPTIONAL_SOURCES)))


def encode_replay(path: str, config: EncodingConfig | None = None) -> EncodedGame:
    """Parse one `.slp` file and encode it (raises `ReplayError` with the reason if it cannot)."""
    config = config or EncodingConfig()
    return encode_game(read_replay(path, items=config.projectiles), config)


def encode_game(raw: RawGame, config: EncodingConfig | None = None) -> EncodedGame:
    """Encode a parsed game with `config` (default: the run card's v3 encoding)."""
    config = config or EncodingConfig()
    plan = _plan(config)
    n = raw.info.frames
    sources = [_player_sources(raw.players[p], raw.items, plan) for p in (0, 1)]
    zeros = np.zeros(n, np.float32)

    floats = np.empty((plan.n_float, n), np.float32)  # (n_float, frames)
    for rows, player, source, index in plan.float_blocks:
        values = sources[player].get(source)
        floats[rows] = 0 if values is None else (values if index is None else values[index])
    for rows, scales in plan.scaled_rows:
        floats[rows] *= scales  # (rows, 1) broadcast over frames
    floats[plan.offset_rows] += plan.offsets
    state_age = np.stack([s.get("state_age", zeros) for s in sources]).astype(np.float32)  # (2, frames)
    replaced = sum(_replace_nonfinite(floats[rows]) for rows in plan.nonfinite_rows) + _replace_nonfinite(state_age)

    stage = np.full(n, raw.info.stage, np.int32)
    wide = np.empty((len(plan.int_sources), n), np.int32)  # (n_int, frames)
    int_rows = [stage if p is None else _int_source(sources[p], key, state_age[p], zeros) for p, key in plan.int_sources]
    np.stack(int_rows, out=wide, casting="unsafe")
    ints = np.clip(wide, 0, plan.int_max).astype(np.int16)  # (n_int, frames)
    return EncodedGame(raw.info, config, floats.T, ints.T, state_age.T, replaced)


@dataclass(frozen=True)
class _Plan:
    """Per-config lookup tables: which source feeds each column, and the per-row transforms."""

    n_float: int
    float_blocks: tuple[tuple, ...]  # (rows, player, source, index into a 2-D source or None)
    derived: frozenset[str]  # derived fields the columns need (facing, state_flags, ...)
    items: bool  # some column is computed from the frame's item list
    scaled_rows: tuple[tuple[slice, np.ndarray], ...]  # runs of rows with scale != 1, and (rows, 1) scales
    nonfinite_rows: tuple[slice, ...]  # runs of rows whose source may hold NaN or inf
    offset_rows: np.ndarray  # rows with a nonzero offset
    offsets: np.ndarray  # (len(offset_rows), 1) float32
    int_sources: tuple[tuple[int | None, str], ...]  # (player or None for stage, field) per int column
    int_max: np.ndarray  # (n_int, 1) int32: vocab - 1


@functools.cache
def _plan(config: EncodingConfig) -> _Plan:
    schema = schema_of(config)
    columns = schema.float_columns
    scales = np.array([c.scale for c in columns], np.float32)
    offsets = np.array([c.offset for c in columns], np.float32)
    offset_rows = np.flatnonzero(offsets)
    return _Plan(
        n_float=len(columns),
        float_blocks=_float_blocks(columns),
        derived=frozenset(c.field for c in columns if c.field in DERIVATIONS),
        items=any(c.source == "items" for c in columns),
        scaled_rows=tuple((rows, scales[rows, None]) for rows in _runs(scales != 1)),
        nonfinite_rows=tuple(_runs(np.array([c.may_be_nonfinite for c in columns]))),
        offset_rows=offset_rows,
        offsets=offsets[offset_rows, None],
        int_sources=tuple((c.player, c.field) for c in schema.int_columns),
        int_max=np.array([[c.vocab - 1] for c in schema.int_columns], np.int32),
    )


def _float_blocks(columns) -> tuple[tuple, ...]:
    """Group columns into blocks written with one assignment each.

    A plain field fills one row; consecutive bit columns of one field (the 40 state-flag bits, the
    8 buttons) fill a block of rows from the field's (bits, frames) source, by a slice when the bits
    are consecutive and a gather otherwise.
    """
    blocks, start = [], 0
    while start < len(columns):
        first = columns[start]
        stop = start + 1
        if first.bit is not None:
            while stop < len(columns) and (columns[stop].player, columns[stop].field) == (first.player, first.field):
                stop += 1
            bits = [c.bit for c in columns[start:stop]]
            index = slice(bits[0], bits[-1] + 1) if bits == list(range(bits[0], bits[-1] + 1)) else np.array(bits)
            blocks.append((slice(start, stop), first.player, first.field, index))
        else:
            blocks.append((start, first.player, first.field, None))
        start = stop
    return tuple(blocks)


def _runs(mask: np.ndarray) -> list[slice]:
    """Slices over the runs of True in a boolean vector."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [slice(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _player_sources(fields: dict[str, np.ndarray], items: ItemFrames | None, plan: _Plan) -> dict[str, np.ndarray]:
    """One player's raw fields plus the derived fields the plan needs; absent inputs leave them absent.

    Bit fields become (bits, frames) arrays: state_flags (40, frames), buttons (16, frames).
    """
    sources = dict(fields)
    for name in plan.derived:
        needs, derive = DERIVATIONS[name]
        if needs in fields:
            sources[name] = derive(fields)
    if plan.items:
        sources.update(_nearest_item(items, fields["x"], fields["y"]))
    return sources


def _flag_bits(fields: dict[str, np.ndarray]) -> np.ndarray:
    flags = fields["state_flags"]  # (5, frames) uint8
    return ((flags[:, None, :] >> _BYTE_BITS) & 1).reshape(STATE_FLAG_BITS, -1)  # (40, frames): row 8*byte + bit


def _button_bits(fields: dict[str, np.ndarray]) -> np.ndarray:
    low = fields["buttons"].astype(np.uint16)  # every button column is one of the 16 low bits
    return ((low[None, :] >> _BUTTON_BITS) & 1).astype(np.uint8)  # (16, frames)


_BYTE_BITS = np.arange(8, dtype=np.uint8)[None, :, None]  # (1, 8, 1)
_BUTTON_BITS = np.arange(16, dtype=np.uint16)[:, None]  # (16, 1)
# Fields computed from a player's raw fields: name -> (the raw field needed, how). The item fields
# are computed from the frame's item list instead (`_nearest_item`).
DERIVATIONS = {
    "facing": ("direction", lambda f: f["direction"] > 0),
    "invulnerable": ("hurtbox_state", lambda f: f["hurtbox_state"] != 0),
    "on_ground": ("airborne", lambda f: f["airborne"] == 0),
    "hitstun": ("misc_as", lambda f: recover_hitstun(f["misc_as"])),
    "state_flags": ("state_flags", _flag_bits),
    "buttons": ("buttons", _button_bits),
}


def _int_source(sources: dict[str, np.ndarray], name: str, state_age: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """The unclipped values of one int column (shape (frames,))."""
    if name == "state_age":
        return np.trunc(state_age)
    if name == "ground" and "ground" in sources:
        ground = sources["ground"].astype(np.int32)
        return np.where(ground == 65535, 0, ground + 1)
    return sources.get(name, zeros)


def recover_hitstun(misc_as: np.ndarray) -> np.ndarray:
    """Hitstun frames from `post.misc_as` (float32, shape (frames,)), clipped to [0, 200].

    Outside hitstun the field holds integers that read as float32 subnormals; those are
    reinterpreted from their bits. NaN stays NaN here and is replaced (and counted) with the rest of
    the non-finite inputs.
    """
    values = np.array(misc_as, dtype=np.float32)
    subnormal = (values != 0) & (np.abs(values) < 1e-10)
    if subnormal.any():
        values[subnormal] = values.view(np.uint32)[subnormal].astype(np.float32)
    return np.clip(values, 0.0, HITSTUN_MAX)


def _nearest_item(items: ItemFrames | None, px: np.ndarray, py: np.ndarray) -> dict[str, np.ndarray]:
    """dx, dy to the nearest item and the item count per frame (zeros on frames without items)."""
    n = len(px)
    out = {key: np.zeros(n, np.float32) for key in ("item_dx", "item_dy", "item_count")}
    if items is None or len(items.frame) == 0:
        return out
    dx = items.x - px[items.frame]  # (n_items,)
    dy = items.y - py[items.frame]
    order = np.lexsort((dx * dx + dy * dy, items.frame))  # by frame, then by distance
    frames, first = np.unique(items.frame[order], return_index=True)
    nearest = order[first]
    out["item_dx"][frames] = dx[nearest]
    out["item_dy"][frames] = dy[nearest]
    out["item_count"][:] = np.minimum(np.bincount(items.frame, minlength=n), ITEM_SLOTS)
    return out


def _replace_nonfinite(array: np.ndarray) -> int:
    """Set NaN/inf entries of a view to 0 in place; return how many there were."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, or a sum past float32's range
        if np.isfinite(np.add.reduce(array, axis=None)):
            return 0
    bad = ~np.isfinite(array)
    array[bad] = 0
    return int(bad.sum())
