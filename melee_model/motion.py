"""How the models read the players' motion: each frame's x and y steps, the velocity priors and
the hold gate.

`MotionSteps` computes each player's step between consecutive frames (layout.moving_columns); with
model.motion_inputs the frame embedding reads those steps as inputs, and with model.motion_prior
"constant_velocity" `MotionPrior` adds the last step to the x and y outputs ("scaled_velocity": the
last step times a learned factor per player and axis). With model.hold_gate, `HoldGate` predicts
whether each player stays exactly where it is and, where it does, sets its x and y outputs to no
motion; `hold_targets` is what it learns. Only the scaled prior and the gate have parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from melee_encode.errors import ConfigError
from melee_model.config import ModelConfig
from melee_model.layout import FrameLayout

MOTION_PRIORS = ("none", "constant_velocity", "scaled_velocity")


class MotionSteps(nn.Module):
    """Each player's x and y step: a frame's layout.moving_columns minus the frame before's.

    A step over MAX_STEP game units (a respawn, a teleport) is 0, since that motion does not go on;
    so is the first frame's, which has no frame before it. No parameters.

    moving(float_frames (..., F)) -> (..., P), P = len(layout.moving_columns): those columns.
    steps(float_frames (B, K, F)) -> (B, K, P): each frame's step, encoded units.
    step(moving (B, P), before (B, P)) -> (B, P): one frame's step from its columns and the last frame's.
    game_units(step (..., P)) -> (..., P): the same steps in game units.
    """

    MAX_STEP = 50.0  # game units in one frame; knockback launches stay under ~20

    def __init__(self, layout: FrameLayout):
        super().__init__()
        scales = torch.tensor([abs(layout.schema.float_columns[i].scale) for i in layout.moving_columns])
        self.register_buffer("columns", torch.tensor(layout.moving_columns), persistent=False)
        self.register_buffer("scales", scales, persistent=False)  # (P,) encoded units per game unit
        self.register_buffer("max_step", self.MAX_STEP * scales, persistent=False)  # (P,) encoded units

    def moving(self, float_frames: torch.Tensor) -> torch.Tensor:
        return float_frames[..., self.columns]

    def steps(self, float_frames: torch.Tensor) -> torch.Tensor:
        moving = self.moving(float_frames)  # (B, K, P)
        return self._gate(torch.cat([torch.zeros_like(moving[:, :1]), moving[:, 1:] - moving[:, :-1]], dim=1))  # (B, K, P)

    def step(self, moving: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        return self._gate(moving - before)  # (B, P)

    def game_units(self, step: torch.Tensor) -> torch.Tensor:
        return step / self.scales

    def _gate(self, step: torch.Tensor) -> torch.Tensor:
        return torch.where(step.abs() <= self.max_step, step, torch.zeros_like(step))


class MotionPrior(nn.Module):
    """Constant velocity as every player's starting guess for x and y (model.motion_prior).

    The float outputs at layout.moving_target_positions become the heads' values plus the last step
    of those columns (`MotionSteps`: 0 where no frame before it was read, and over MAX_STEP), so the
    heads predict how the step changes (gravity, landings, hits) rather than the step itself, which
    the model would otherwise have to recover as the difference of two large inputs. Those rows of
    the heads start at zero (`silence`), so an untrained model moves players as the
    constant_velocity baseline does. No parameters: weights keep their shapes.

    With `d_in` ("scaled_velocity"), the step added is the last step times 1 + gain(h), a Linear from
    the heads' input h (..., d_in) to one factor per moving column, starting at zero: a model can
    then slow a player down, stop or turn one (gain -1, -2) whichever way it moves, where the
    heads' additive change has to know the step's sign and size.

    add(pred_float (..., T), step (..., P), h (..., d_in) or None) -> (..., T).
    """

    def __init__(self, layout: FrameLayout, d_in: int | None = None):
        super().__init__()
        self.register_buffer("positions", torch.tensor(layout.moving_target_positions), persistent=False)
        positions = layout.moving_target_positions
        self.block, block = next((n, b) for n, b in layout.float_blocks.items() if b.start <= min(positions) and max(positions) < b.stop)
        self.rows = [j - block.start for j in positions]  # the moving targets' rows in that block's head
        self.gain = nn.Linear(d_in, len(positions)) if d_in is not None else None
        if self.gain is not None:
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.gain.bias)

    def silence(self, heads: nn.Module) -> None:
        """Zero the heads' rows of the moving targets, so that they start at the prior's guess."""
        with torch.no_grad():
            head = heads.float_heads[self.block]
            head.weight[self.rows] = 0.0
            head.bias[self.rows] = 0.0

    def add(self, pred_float: torch.Tensor, step: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if self.gain is not None:
            step = step * (1 + self.gain(h))  # (..., P)
        return pred_float.index_add(-1, self.positions, step.to(pred_float.dtype))  # (..., T)


class HoldGate(nn.Module):
    """model.hold_gate: whether each player's x and y stay exactly as they are in the next frame.

    A player's position does not change at all in 28% of the frames of ../shared/corpus (standing,
    hanging on a ledge, hitlag), and in 93% of the frames after one where it did not: a point mass at
    no motion that a regression head, whose outputs are never exactly 0, turns into a slow drift over
    a rollout. The gate is a Linear from the heads' input h to one logit per player, trained by
    binary cross-entropy against `hold_targets` (loss.hold); where a logit is over 0 that player's x
    and y outputs become 0 (no change: the delta targets of layout.moving_target_positions), in
    training as in every prediction, so the float loss sees what a rollout does. It starts at a bias
    of -2 (holding nobody), so an untrained model moves players as it would without it.

    forward(out, h (..., d_in)) -> out through the gate: the heads' dict with "float" (..., T) the
    held players' x and y set to 0, and "hold" (..., 2) the logits, players p0, p1.
    """

    def __init__(self, layout: FrameLayout, d_in: int):
        super().__init__()
        self.linear = nn.Linear(d_in, 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, -2.0)
        self.register_buffer("positions", torch.tensor(layout.moving_target_positions), persistent=False)  # p0.x, p0.y, p1.x, p1.y

    def forward(self, out: dict, h: torch.Tensor) -> dict:
        logits, pred_float = self.linear(h), out["float"]  # (..., 2), (..., T)
        moves = (logits <= 0).repeat_interleave(2, dim=-1)  # (..., 4): each player's x and y
        held = pred_float[..., self.positions] * moves.to(pred_float.dtype)  # (..., 4)
        return {**out, "float": pred_float.index_copy(-1, self.positions, held), "hold": logits}


def hold_targets(layout: FrameLayout, float_tgt: torch.Tensor) -> torch.Tensor:
    """1.0 where a player's x and y delta targets are exactly 0, else 0.0: float_tgt (..., T) -> (..., 2).

    Read from the true targets, before scheduled sampling or an unroll moves them to a frame the model made."""
    deltas = float_tgt[..., list(layout.moving_target_positions)].unflatten(-1, (2, 2))  # (..., 2, 2): player, axis
    return (deltas == 0).all(dim=-1).float()  # (..., 2)


def build_motion(config: ModelConfig, layout: FrameLayout) -> MotionSteps | None:
    """The players' steps, which a motion prior or motion inputs read; None when neither is on."""
    return MotionSteps(layout) if config.motion_prior != "none" or config.motion_inputs else None


def build_prior(config: ModelConfig, layout: FrameLayout, heads: nn.Module, d_in: int) -> MotionPrior | None:
    """The model's motion prior (its rows of `heads` silenced), or None for "none"; d_in: the heads' input width."""
    if config.motion_prior not in MOTION_PRIORS:
        raise ConfigError(f"unknown model.motion_prior {config.motion_prior!r}; options: {', '.join(MOTION_PRIORS)}")
    if config.motion_prior == "none":
        return None
    prior = MotionPrior(layout, d_in if config.motion_prior == "scaled_velocity" else None)
    prior.silence(heads)
    return prior


def build_hold(config: ModelConfig, layout: FrameLayout, d_in: int) -> HoldGate | None:
    """The model's hold gate with model.hold_gate, else None; d_in: the heads' input width."""
    return HoldGate(layout, d_in) if config.hold_gate else None
