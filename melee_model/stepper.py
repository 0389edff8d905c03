"""The rollout's frame rule (spec section 5): how a prediction becomes the next input frame.

A predicted frame is the last context frame with:
    continuous, velocity columns   += the predicted deltas
    binary columns                 := sigmoid(logit) > 0.5
    dynamics columns               := the predicted values
    stocks, with data.stocks_target "delta"
                                   += the predicted change, rounded to whole stocks (a count: the
                                      change of most frames is a small fraction, which would add up)
    controller columns             := the replay's at that frame
    TARGET_FIELDS int columns      := argmax per player
    state_age, in either encoding  := previous + 1 frame while the player's action is unchanged, else 0
                                      (the int column clipped to its vocab; the float one, x0.01, not)
    character, stage               carried over
then percent, x, y, shield and stocks clamped to their game ranges (converted with each column's
scale/offset from the schema), and with model.stage_floor a player who would fall through the main
platform put on it (`StageFloor`). Used by rollouts, by the true scheduled sampling of training and,
for the floor, by the constant-velocity baseline.

Shape letters: N frames at once, F n_float, I n_int, C ctrl_dim, T float_target_dim.
"""

from __future__ import annotations

import numpy as np
import torch

from melee_encode.errors import ConfigError
from melee_encode.stage_geometry import STAGE_GEOMETRY
from melee_model.layout import TARGET_FIELDS, FrameLayout

# Game-unit ranges of the clamped fields (spec section 5).
CLAMP_RANGES = {"percent": (0.0, 999.0), "x": (-300.0, 300.0), "y": (-200.0, 300.0), "shield": (0.0, 60.0), "stocks": (0.0, 4.0)}


class StageFloor:
    """The main platform as a floor the predicted frames cannot fall through (model.stage_floor).

    A player at or above y = 0 in the last frame whose next y is below 0, with the next x over the
    main platform of the frame's stage (main_left .. main_right, melee_encode.stage_geometry), lands:
    next y := 0. A trained model has to hit a landing on its very frame; one frame late, it reads a
    player below the stage, which in real games is one falling to its death, and keeps falling.
    Players already below 0 (under the stage, recovering) are left alone, and so are stages without
    geometry. Yoshi's Story's sloped ends are taken as flat. Works in encoded units: y = 0 is the
    column's offset.

    __call__(last_float (N, F), next_float (N, F), last_int (N, I)) -> next_float with y landed.
    """

    def __init__(self, layout: FrameLayout, device):
        self.x_columns, self.x_scale, self.x_offset = _encoding(layout, "x", device)  # (2,) each
        self.y_columns, self.y_scale, self.y_offset = _encoding(layout, "y", device)
        # Stage id -> (left, right) of its main platform; NaN (never over it) where there is no geometry.
        edges = torch.full((layout.vocab("stage"), 2), float("nan"))
        for stage, geometry in STAGE_GEOMETRY.items():
            if stage < len(edges):
                edges[stage] = torch.tensor([geometry.main_left, geometry.main_right])
        self.edges = edges.to(device)  # (S, 2) game units
        self.stage_column = layout.int_columns_of("stage")[0]

    def __call__(self, last_float: torch.Tensor, next_float: torch.Tensor, last_int: torch.Tensor) -> torch.Tensor:
        above = (last_float[:, self.y_columns] - self.y_offset) / self.y_scale >= 0  # (N, 2)
        below = (next_float[:, self.y_columns] - self.y_offset) / self.y_scale < 0  # (N, 2)
        x = (next_float[:, self.x_columns] - self.x_offset) / self.x_scale  # (N, 2) game units
        edges = self.edges[last_int[:, self.stage_column]]  # (N, 2)
        over = (x >= edges[:, :1]) & (x <= edges[:, 1:])  # (N, 2)
        landed = next_float.clone()
        landed[:, self.y_columns] = torch.where(above & below & over, self.y_offset.expand_as(x), next_float[:, self.y_columns])
        return landed


def _encoding(layout: FrameLayout, field: str, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both players' float columns of `field`, and their scales and offsets: (2,) each."""
    schema = layout.schema
    columns = [schema.float_index(f"p{p}.{field}") for p in (0, 1)]
    scale, offset = ([getattr(schema.float_columns[i], key) for i in columns] for key in ("scale", "offset"))
    return (torch.tensor(values, device=device) for values in (columns, scale, offset))


class FrameStepper:
    """One rollout step's index tensors, built once from the layout on the device.

    next_ctrl(last_float (N, F), replay_float (N, F)) -> (N, C), as build_batch makes it;
    frame(last_float (N, F), last_int (N, I), pred, replay_float (N, F)) -> the predicted frame,
    (N, F) float32 and (N, I) int64; see the module docstring for how each column is set;
    settle(last_float, floats, last_int): the clamps and the floor alone (the baselines' frames).
    """

    def __init__(self, layout: FrameLayout, device):
        if layout.lookahead:
            raise ConfigError(f"rollouts need data.lookahead 0 (one predicted frame per step); this model has lookahead {layout.lookahead}")
        self.layout = layout
        schema = layout.schema
        index = lambda values: torch.tensor(list(values), dtype=torch.long, device=device)  # noqa: E731
        targets = np.array(layout.float_target_columns)
        binary, dynamics = layout.float_blocks["binary"], layout.float_blocks["dynamics"]
        self.delta_positions, self.delta_columns = index(layout.delta_target_positions), index(layout.delta_target_columns)
        self.binary_positions, self.binary_columns = index(range(binary.start, binary.stop)), index(targets[binary])
        absolute = [j for j in range(dynamics.start, dynamics.stop) if not layout.float_target_is_delta[j]]  # stocks can be a delta
        self.dynamics_positions, self.dynamics_columns = index(absolute), index(targets[absolute])
        counted = [i for i in layout.delta_target_columns if schema.float_columns[i].field == "stocks"]  # data.stocks_target delta
        self.count_columns = index(counted)
        self.count_scale = torch.tensor([schema.float_columns[i].scale for i in counted], dtype=torch.float32, device=device)
        self.count_offset = torch.tensor([schema.float_columns[i].offset for i in counted], dtype=torch.float32, device=device)
        self.ctrl_columns, self.button_columns = index(layout.ctrl_columns), index(layout.button_columns)
        self.int_columns = {f: index(schema.int_index(f"p{p}.{f}") for p in (0, 1)) for f in TARGET_FIELDS}  # field -> (2,)
        self.action_columns = index(layout.action_columns)
        self.state_age_columns = index(layout.int_columns_of("state_age"))  # (2,), or empty when state_age is no int column
        self.state_age_max = layout.vocab("state_age") - 1 if len(self.state_age_columns) else 0
        ages = [(i, c) for i, c in enumerate(schema.float_columns) if c.field == "state_age"]  # p0's, then p1's
        self.state_age_floats = index(i for i, _ in ages)  # (2,), or empty when state_age is no float column
        # One frame older, and age 0, in the float column's encoding.
        self.state_age_step = torch.tensor([c.scale for _, c in ages], dtype=torch.float32, device=device)
        self.state_age_zero = torch.tensor([c.offset for _, c in ages], dtype=torch.float32, device=device)
        clamped = [(i, c) for i, c in enumerate(schema.float_columns) if c.player is not None and c.field in CLAMP_RANGES]
        bounds = np.array([[lo * c.scale + c.offset for lo in CLAMP_RANGES[c.field]] for _, c in clamped]).reshape(-1, 2)
        self.clamp_columns = index(i for i, _ in clamped)
        # A negative scale would swap the ends of a range once encoded.
        self.clamp_low = torch.tensor(bounds.min(axis=1), dtype=torch.float32, device=device)
        self.clamp_high = torch.tensor(bounds.max(axis=1), dtype=torch.float32, device=device)
        self.floor = StageFloor(layout, device) if layout.stage_floor else None

    def next_ctrl(self, last_float: torch.Tensor, replay_float: torch.Tensor) -> torch.Tensor:
        controls = replay_float[:, self.ctrl_columns]  # (N, 26)
        if not self.layout.press_events:
            return controls
        buttons = replay_float[:, self.button_columns] > 0.5  # (N, 16)
        pressed = buttons & (last_float[:, self.button_columns] <= 0.5)
        return torch.cat([controls, pressed.float()], dim=1)  # (N, 26 + 16)

    def settle(self, last_float: torch.Tensor, floats: torch.Tensor, last_int: torch.Tensor) -> torch.Tensor:
        """A new frame's floats (N, F) clamped to the game's ranges and, with a stage floor, landed;
        last_float (N, F) and last_int (N, I) are the frame before it."""
        floats[:, self.clamp_columns] = floats[:, self.clamp_columns].clamp(self.clamp_low, self.clamp_high)
        if self.floor is None:
            return floats
        return self.floor(last_float, floats, last_int)

    def frame(
        self, last_float: torch.Tensor, last_int: torch.Tensor, pred: dict, replay_float: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = pred["float"].float()  # (N, T)
        floats = last_float.clone()  # (N, F)
        floats[:, self.delta_columns] += out[:, self.delta_positions]
        floats[:, self.binary_columns] = (torch.sigmoid(out[:, self.binary_positions]) > 0.5).float()
        floats[:, self.dynamics_columns] = out[:, self.dynamics_positions]
        if len(self.count_columns):
            counts = (floats[:, self.count_columns] - self.count_offset) / self.count_scale  # (N, 2)
            floats[:, self.count_columns] = counts.round() * self.count_scale + self.count_offset
        floats[:, self.ctrl_columns] = replay_float[:, self.ctrl_columns]
        floats = self.settle(last_float, floats, last_int)
        ints = last_int.clone()  # (N, I)
        for field in TARGET_FIELDS:
            ints[:, self.int_columns[field]] = pred[field].argmax(-1)  # (N, 2)
        same = ints[:, self.action_columns] == last_int[:, self.action_columns]  # (N, 2)
        if len(self.state_age_columns):
            older = (last_int[:, self.state_age_columns] + 1).clamp(max=self.state_age_max)
            ints[:, self.state_age_columns] = torch.where(same, older, torch.zeros_like(older))
        if len(self.state_age_floats):
            older = last_float[:, self.state_age_floats] + self.state_age_step  # (N, 2)
            floats[:, self.state_age_floats] = torch.where(same, older, self.state_age_zero.expand_as(older))
        return floats, ints
