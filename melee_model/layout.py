"""The example layout: which store columns feed each part of a training example and each head.

`FrameLayout` is derived from a store's column schema (never from hard-coded offsets, which is how
the reference broke when a flag moved its columns), the example options (context length, press
events, lookahead) and the rollout's stage floor. Everything downstream (the data pipeline, the
model, the losses and the rollouts) reads its indices and sizes from here.

An example for target frame t (spec section 3), with K = context_len and d = lookahead:
    float_ctx (K, n_float)  frames t-K .. t-1            int_ctx (K, n_int)   the same frames
    next_ctrl (ctrl_dim)    controller columns of p0 then p1 at frames t .. t+d, each frame followed
                            by its 16 button rising edges when press_events is on
    float_tgt (112 at v3)   [p0 d(continuous), p1 d(continuous), p0 d(velocity), p1 d(velocity),
                             p0 binary, p1 binary, p0 dynamics, p1 dynamics] at frame t+d, where
                            d(c) = value at t+d minus value at the delta's base frame:
                            lookahead_delta "from_context" (ours): t-1, the last context frame;
                            "from_previous" (the reference's): t+d-1. Both are t-1 when d = 0.
                            With stocks_target "delta", the stocks of the dynamics blocks are
                            d(stocks) too (the card: absolute, as the rest of those blocks).
    int_tgt (12)            per player: action, jumps_left, l_cancel, hurtbox_state, ground,
                            last_attack_landed at frame t+d

state_age is never a target, in either encoding: the int column (state_age_as_embed) and the float
column (state_age x0.01) are inputs only, which a rollout derives from the predicted action.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from melee_encode.config import N_BUTTONS, Schema
from melee_encode.errors import ConfigError
from melee_model.config import ExperimentConfig

# Categorical targets per player, in int_tgt order; each gets a head of its vocabulary's size.
TARGET_FIELDS = ("action", "jumps_left", "l_cancel", "hurtbox_state", "ground", "last_attack_landed")
# Float target blocks in float_tgt order; "delta" blocks are differences, the others absolute.
FLOAT_BLOCKS = (("continuous", True), ("velocity", True), ("binary", False), ("dynamics", False))
# Float fields that are inputs only, whatever group a store's schema files them under (stores
# written before state_age had its own group have it under "dynamics").
INPUT_ONLY_FIELDS = ("state_age",)
LOOKAHEAD_DELTAS = ("from_context", "from_previous")
STOCKS_TARGETS = ("absolute", "delta")
# Per-player fields that move with a velocity: the constant-velocity baseline and motion prior carry them on.
MOVING_FIELDS = ("x", "y")


@dataclass(frozen=True)
class FrameLayout:
    """Indices into the store's float/int columns and the sizes of examples and heads."""

    schema: Schema
    context_len: int = 10
    press_events: bool = False
    lookahead: int = 0
    lookahead_delta: str = "from_context"  # the delta's base frame with a lookahead: t-1, or t+d-1
    stage_floor: bool = False  # model.stage_floor: predicted frames land on the main platform (stepper.StageFloor)
    stocks_target: str = "absolute"  # data.stocks_target: stocks predicted as they are, or as a change (a delta target)

    # Derived in __post_init__:
    ctrl_columns: tuple[int, ...] = field(init=False)  # float columns of one frame's controls: p0 then p1
    button_columns: tuple[int, ...] = field(init=False)  # the 16 button columns: p0's 8 then p1's 8
    float_target_columns: tuple[int, ...] = field(init=False)  # float columns in float_tgt order
    float_target_is_delta: tuple[bool, ...] = field(init=False)
    delta_target_positions: tuple[int, ...] = field(init=False)  # positions in float_tgt of the delta targets
    delta_target_columns: tuple[int, ...] = field(init=False)  # and their float columns
    float_blocks: dict[str, slice] = field(init=False)  # block name -> slice of float_tgt
    int_target_columns: tuple[int, ...] = field(init=False)  # int columns in int_tgt order
    action_columns: tuple[int, int] = field(init=False)  # int columns of p0.action, p1.action
    moving_columns: tuple[int, ...] = field(init=False)  # float columns of MOVING_FIELDS: p0.x, p0.y, p1.x, p1.y
    moving_target_positions: tuple[int, ...] = field(init=False)  # and their positions in float_tgt (delta targets)
    embedded_fields: tuple[str, ...] = field(init=False)  # int fields to embed, in first-appearance order

    def __post_init__(self):
        schema = self.schema
        if self.lookahead_delta not in LOOKAHEAD_DELTAS:
            raise ConfigError(f"data.lookahead_delta must be one of {', '.join(LOOKAHEAD_DELTAS)}, got {self.lookahead_delta!r}")
        if self.stocks_target not in STOCKS_TARGETS:
            raise ConfigError(f"data.stocks_target must be one of {', '.join(STOCKS_TARGETS)}, got {self.stocks_target!r}")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        controls = [schema.float_indices(player=p, group="controller") for p in (0, 1)]
        set_("ctrl_columns", tuple(controls[0] + controls[1]))
        buttons = [i for i in self.ctrl_columns if schema.float_columns[i].field == "buttons"]
        set_("button_columns", tuple(buttons))
        columns, is_delta, blocks = [], [], {}
        for group, delta in FLOAT_BLOCKS:
            start = len(columns)
            for player in (0, 1):
                block = [
                    i for i in schema.float_indices(player=player, group=group) if schema.float_columns[i].field not in INPUT_ONLY_FIELDS
                ]
                columns += block
                is_delta += [delta or self._stocks_delta(i) for i in block]
            blocks[group] = slice(start, len(columns))
        set_("float_target_columns", tuple(columns))
        set_("float_target_is_delta", tuple(is_delta))
        set_("delta_target_positions", tuple(j for j, delta in enumerate(is_delta) if delta))
        set_("delta_target_columns", tuple(columns[j] for j in self.delta_target_positions))
        set_("float_blocks", blocks)
        set_(
            "int_target_columns",
            tuple(schema.int_indices(player=0, fields=TARGET_FIELDS) + schema.int_indices(player=1, fields=TARGET_FIELDS)),
        )
        set_("action_columns", (schema.int_index("p0.action"), schema.int_index("p1.action")))
        set_("embedded_fields", tuple(dict.fromkeys(c.field for c in schema.int_columns)))
        set_("moving_columns", tuple(schema.float_index(f"p{p}.{f}") for p in (0, 1) for f in MOVING_FIELDS))
        set_("moving_target_positions", tuple(columns.index(i) for i in self.moving_columns))
        if not all(is_delta[j] for j in self.moving_target_positions):
            raise ConfigError(f"the encoding must predict {', '.join(MOVING_FIELDS)} as delta targets")
        if len(self.button_columns) != 2 * N_BUTTONS:
            raise ConfigError(f"the encoding must have {N_BUTTONS} button columns per player")
        if self.stage_floor and len(self.int_columns_of("stage")) != 1:
            raise ConfigError("model.stage_floor needs the stage as an int column of the encoding")

    def _stocks_delta(self, column: int) -> bool:
        return self.stocks_target == "delta" and self.schema.float_columns[column].field == "stocks"

    @property
    def n_float(self) -> int:
        return self.schema.n_float

    @property
    def n_int(self) -> int:
        return self.schema.n_int

    @property
    def frame_ctrl_dim(self) -> int:
        """Controller features of one frame: 26, or 42 with press events."""
        return len(self.ctrl_columns) + (2 * N_BUTTONS if self.press_events else 0)

    @property
    def ctrl_dim(self) -> int:
        """Size of next_ctrl: one frame's controls for each of frames t .. t+lookahead."""
        return self.frame_ctrl_dim * (self.lookahead + 1)

    @property
    def float_target_dim(self) -> int:
        return len(self.float_target_columns)

    @property
    def int_target_dim(self) -> int:
        return len(self.int_target_columns)

    @property
    def span(self) -> int:
        """Frames one example covers: K context frames, then frames t .. t+lookahead."""
        return self.context_len + self.lookahead + 1

    def vocab(self, field_name: str) -> int:
        """Vocabulary of an int field (the same for both players)."""
        return next(c.vocab for c in self.schema.int_columns if c.field == field_name)

    def int_columns_of(self, field_name: str) -> tuple[int, ...]:
        """The int columns holding a field: one per player, or one for stage."""
        return tuple(i for i, c in enumerate(self.schema.int_columns) if c.field == field_name)

    def float_target_index(self, name: str) -> int:
        """Position in float_tgt of a float column, e.g. "p1.x"."""
        return self.float_target_columns.index(self.schema.float_index(name))


def layout_for(config: ExperimentConfig, schema: Schema) -> FrameLayout:
    """The layout of an experiment's examples over a store's columns."""
    data = config.data
    return FrameLayout(
        schema,
        context_len=data.context_len,
        press_events=data.press_events,
        lookahead=data.lookahead,
        lookahead_delta=data.lookahead_delta,
        stage_floor=config.model.stage_floor,
        stocks_target=data.stocks_target,
    )
