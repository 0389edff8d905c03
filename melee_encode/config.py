"""The encoding configuration and the column schema it implies.

`EncodingConfig` holds the flags that change which columns exist (the defaults are the run card's v3
encoding); `EncodingConfig.schema()` turns them into the ordered list of float and int columns, each
with its name, group, transform and where it comes from: the replay field (`source`, named as in the
replay, e.g. "velocities" or "misc_as") and whether that field can hold NaN or inf. The encoder's
NaN replacement and the per-game missing-field flags are driven by these attributes alone. The schema
is written into every store, so readers find columns by name and group and decode values back to
game units, never by a hard-coded offset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError

PLAYERS = ("p0", "p1")
# Processed-button bits of pre.buttons, in column order: A 0x100, B 0x200, X 0x400, Y 0x800, Z 0x10, L 0x40,
# R 0x20, D_UP 0x08.
BUTTON_BITS = (("A", 8), ("B", 9), ("X", 10), ("Y", 11), ("Z", 4), ("L", 6), ("R", 5), ("D_UP", 3))
N_BUTTONS = len(BUTTON_BITS)
VELOCITIES = ("speed_air_x", "speed_y", "speed_ground_x", "speed_attack_x", "speed_attack_y")
STATE_FLAG_BYTES = 5  # post.state_flags
STATE_FLAG_BITS = 8 * STATE_FLAG_BYTES

# Int columns: field -> vocabulary size (values are clipped to [0, vocab - 1]).
INT_VOCABS = {
    "action": 400,
    "jumps_left": 8,
    "character": 33,
    "l_cancel": 3,
    "hurtbox_state": 3,
    "ground": 32,
    "last_attack_landed": 64,
    "state_age": 150,
    "stage": 33,
}


@dataclass(frozen=True)
class EncodingConfig:
    """Which optional columns the encoding has. The defaults are the run card's v3 encoding."""

    state_flags: bool = True  # 40 state-flag bits per player
    hitstun: bool = True  # recovered hitstun frames (misc_as) per player
    state_age_as_embed: bool = True  # state_age as an int column to embed, else a float column
    projectiles: bool = False  # nearest item dx, dy and item count per player

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EncodingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown encoding option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def schema(self) -> Schema:
        return Schema(float_columns=_float_columns(self), int_columns=_int_columns(self))


@dataclass(frozen=True)
class FloatColumn:
    """One float column: stored value = raw * scale + offset (raw in game units)."""

    name: str  # e.g. "p0.x"
    player: int | None
    field: str  # the quantity it holds, e.g. "x", or a derived one ("facing", "hitstun")
    group: str  # continuous | velocity | state_age | dynamics | projectile | binary | controller
    scale: float = 1.0
    offset: float = 0.0
    bit: int | None = None  # for bit fields (state_flags, buttons): value = (field >> bit) & 1
    source: str = ""  # the replay field it is read or derived from, as the replay names it
    may_be_nonfinite: bool = False  # the source is a float field that can hold NaN or inf


@dataclass(frozen=True)
class IntColumn:
    """One categorical column with values in [0, vocab)."""

    name: str  # e.g. "p0.action"
    player: int | None
    field: str
    vocab: int
    source: str = ""  # the replay field it is read from, as the replay names it


@dataclass(frozen=True)
class Schema:
    """The ordered columns of the float and int arrays of an encoding."""

    float_columns: tuple[FloatColumn, ...]
    int_columns: tuple[IntColumn, ...]
    state_age_columns: tuple[str, ...] = field(default=("p0.state_age", "p1.state_age"))

    @property
    def n_float(self) -> int:
        return len(self.float_columns)

    @property
    def n_int(self) -> int:
        return len(self.int_columns)

    def float_index(self, name: str) -> int:
        return _index_of(self.float_columns, name)

    def int_index(self, name: str) -> int:
        return _index_of(self.int_columns, name)

    def float_indices(self, *, player: int | None = None, group: str | None = None) -> list[int]:
        """Indices of the float columns of one player and/or group, in column order."""
        return [
            i for i, c in enumerate(self.float_columns) if (player is None or c.player == player) and (group is None or c.group == group)
        ]

    def int_indices(self, *, player: int | None = None, fields: tuple[str, ...] | None = None) -> list[int]:
        """Indices of the int columns of one player, optionally restricted to some fields, in `fields` order."""
        columns = [(i, c) for i, c in enumerate(self.int_columns) if c.player == player]
        if fields is None:
            return [i for i, _ in columns]
        by_field = {c.field: i for i, c in columns}
        return [by_field[f] for f in fields]

    def sources(self) -> frozenset[str]:
        """Every replay field some column reads."""
        return frozenset(c.source for c in (*self.float_columns, *self.int_columns))

    def decode_float(self, values, name: str):
        """Stored values of column `name` back in game units."""
        column = self.float_columns[self.float_index(name)]
        return (values - column.offset) / column.scale

    def to_dict(self) -> dict:
        return {
            "float_columns": [dataclasses.asdict(c) for c in self.float_columns],
            "int_columns": [dataclasses.asdict(c) for c in self.int_columns],
            "state_age_columns": list(self.state_age_columns),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Schema:
        return cls(
            float_columns=tuple(FloatColumn(**c) for c in values["float_columns"]),
            int_columns=tuple(IntColumn(**c) for c in values["int_columns"]),
            state_age_columns=tuple(values["state_age_columns"]),
        )


def _index_of(columns, name: str) -> int:
    for i, column in enumerate(columns):
        if column.name == name:
            return i
    raise KeyError(f"no column named {name!r}")


# Where each per-player float field comes from: (the replay field, whether it can be NaN or inf).
# Replay fields are named as in the replay (peppi's post/pre frame names), so that a field an old
# replay lacks (replay.OPTIONAL_SOURCES) flags exactly the columns that read it.
FLOAT_SOURCES: dict[str, tuple[str, bool]] = {
    "percent": ("percent", True),
    "x": ("position", True),
    "y": ("position", True),
    "shield": ("shield", True),
    **{v: ("velocities", True) for v in VELOCITIES},
    "state_age": ("state_age", True),
    "hitlag": ("hitlag", True),
    "stocks": ("stocks", False),
    "combo_count": ("combo_count", False),
    "hitstun": ("misc_as", True),
    "item_dx": ("items", True),
    "item_dy": ("items", True),
    "item_count": ("items", False),
    "facing": ("direction", False),
    "invulnerable": ("hurtbox_state", False),
    "on_ground": ("airborne", False),
    "state_flags": ("state_flags", False),
    "main_x": ("joystick", True),
    "main_y": ("joystick", True),
    "c_x": ("cstick", True),
    "c_y": ("cstick", True),
    "shoulder": ("triggers", True),
    "buttons": ("buttons", False),
}
# The same for the int fields (stage is a game-level field of the start block).
INT_SOURCES: dict[str, str] = {
    "action": "state",
    "jumps_left": "jumps",
    "character": "character",
    "l_cancel": "l_cancel",
    "hurtbox_state": "hurtbox_state",
    "ground": "ground",
    "last_attack_landed": "last_attack_landed",
    "state_age": "state_age",
    "stage": "stage",
}


def _player_floats(config: EncodingConfig, player: int) -> list[FloatColumn]:
    p = PLAYERS[player]

    def col(field_name: str, group: str, scale: float = 1.0, offset: float = 0.0, name: str | None = None, bit=None):
        source, nonfinite = FLOAT_SOURCES[field_name]
        return FloatColumn(f"{p}.{name or field_name}", player, field_name, group, scale, offset, bit, source, nonfinite)

    columns = [
        col("percent", "continuous", 0.01),
        col("x", "continuous", 0.05),
        col("y", "continuous", 0.05),
        col("shield", "continuous", 0.01),
    ]
    columns += [col(v, "velocity", 0.05) for v in VELOCITIES]
    if not config.state_age_as_embed:
        # Its own group: an input the model reads, never a target (a rollout derives it from the action).
        columns.append(col("state_age", "state_age", 0.01))
    columns += [col("hitlag", "dynamics", 0.1), col("stocks", "dynamics", 0.25), col("combo_count", "dynamics", 0.1)]
    if config.hitstun:
        columns.append(col("hitstun", "dynamics", 0.02))
    if config.projectiles:
        columns += [
            col("item_dx", "projectile", 0.05),
            col("item_dy", "projectile", 0.05),
            col("item_count", "projectile", 0.1),
        ]
    columns += [col("facing", "binary"), col("invulnerable", "binary"), col("on_ground", "binary")]
    if config.state_flags:
        columns += [col("state_flags", "binary", name=f"state_flags.{b}", bit=b) for b in range(STATE_FLAG_BITS)]
    columns += [
        col("main_x", "controller", 0.5, 0.5),
        col("main_y", "controller", 0.5, 0.5),
        col("c_x", "controller", 0.5, 0.5),
        col("c_y", "controller", 0.5, 0.5),
        col("shoulder", "controller"),
    ]
    columns += [col("buttons", "controller", name=f"button_{button}", bit=b) for button, b in BUTTON_BITS]
    return columns


def _float_columns(config: EncodingConfig) -> tuple[FloatColumn, ...]:
    return tuple(_player_floats(config, 0) + _player_floats(config, 1))


def _int_columns(config: EncodingConfig) -> tuple[IntColumn, ...]:
    per_player = ["action", "jumps_left", "character", "l_cancel", "hurtbox_state", "ground", "last_attack_landed"]
    if config.state_age_as_embed:
        per_player.append("state_age")
    columns = [
        IntColumn(f"{PLAYERS[player]}.{name}", player, name, INT_VOCABS[name], INT_SOURCES[name])
        for player in (0, 1)
        for name in per_player
    ]
    columns.append(IntColumn("stage", None, "stage", INT_VOCABS["stage"], INT_SOURCES["stage"]))
    return tuple(columns)
