"""Unrolled training (train.unroll, sequence objective): a short rollout per window, trained through
the model's own frames.

Teacher-forced, a position's error costs one frame's error; in a rollout an error in a player's step
is carried on to every later frame. Here each window is also rolled out for `frames` frames from a
branch position b, drawn per batch uniformly in 1 .. L-frames: the real frames s .. s+b-1 are run in
one prefill (without gradients), then frames s+b .. s+b+frames-1 are the model's own, each made from
its prediction by `FrameStepper.frame` and read back with one recurrent step, gradients kept through
all of them (the loop of rollout scheduled sampling, `scheduled_sampling.roll_out`); with `gradient`
"local" each own frame is read back without its gradient, so a row trains only the step that made its
frame, for that frame alone. Every rolled-out frame's prediction is a target row like the
teacher-forced ones, its delta targets taken from the model's own frame it read (true next frame
minus own frame), so that a row's float error is the rollout's error at that frame, and its gradient
reaches every step before it ("through"). It starts at epoch `start_epoch` (default 1: the untrained
model's rollouts are noise, whose errors would swamp the teacher-forced rows) and, unlike
scheduled sampling (melee_model.scheduled_sampling), adds targets instead of replacing inputs. With
`fields` "position" only the players' x and y are rolled out; every other column of an own frame (speeds,
damage, stocks, actions...) is the true one, so only positions drift and carry gradients. With
"motion" their speeds (the velocity block) are the rollout's too: the inputs a drifting step
reads in a real rollout, without its damage and actions.

With `trains` "age" the rolled-out rows train model.rollout_age's tables alone (`only_age_trains`): the
rollout still runs with gradients through every step, but no other weight records them, so what the
model predicts from real frames is the teacher-forced rows' alone, and the rollout learns only how to
answer from its own frames as they get older. Those tables need few rows but must move far in the
few hundred steps an unroll gets: `share` < 1 unrolls only that fraction of the batches (a
recurrent step costs far more than a position of the parallel pass), and `age_lr` raises their
learning rate (melee_model.optim.adamw).

Shape letters: B windows, L positions, n = frames, F n_float, I n_int, T float_target_dim.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from melee_encode.errors import ConfigError
from melee_model.config import UnrollConfig
from melee_model.layout import FrameLayout
from melee_model.model import AGE_PARAMETERS
from melee_model.scheduled_sampling import roll_out
from melee_model.sequence import SequenceParts
from melee_model.stepper import FrameStepper

FIELDS = ("all", "position", "motion")
TRAINS = ("all", "age")
GRADIENTS = ("through", "local")


def check_unroll(config: UnrollConfig, objective: str, seq_len: int, rollout_age: int = 0) -> None:
    """Refuse an unroll that cannot run: it needs sequence windows longer than its frames (and, to
    train the rollout's age alone, a model with one)."""
    if config.frames < 0 or config.weight < 0 or config.start_epoch < 0:
        raise ConfigError(
            f"train.unroll.frames, weight and start_epoch must be >= 0, got {config.frames}, {config.weight}, {config.start_epoch}"
        )
    if not 0 < config.share <= 1 or config.age_lr <= 0:
        raise ConfigError(f"train.unroll.share must be in (0, 1] and age_lr > 0, got {config.share} and {config.age_lr}")
    if config.fields not in FIELDS:
        raise ConfigError(f"train.unroll.fields must be one of {', '.join(FIELDS)}, got {config.fields!r}")
    if config.gradient not in GRADIENTS:
        raise ConfigError(f"train.unroll.gradient must be one of {', '.join(GRADIENTS)}, got {config.gradient!r}")
    if config.trains not in TRAINS:
        raise ConfigError(f"train.unroll.trains must be one of {', '.join(TRAINS)}, got {config.trains!r}")
    if config.frames and config.trains == "age" and not rollout_age:
        raise ConfigError("train.unroll.trains 'age' needs model.rollout_age > 0 (the table it trains)")
    if config.frames and objective != "sequence":
        raise ConfigError(f"train.unroll needs data.objective 'sequence' (windows to roll out in); this config has {objective!r}")
    if config.frames >= seq_len:
        raise ConfigError(
            f"train.unroll.frames ({config.frames}) must be under data.seq_len ({seq_len}): the rollout starts after a real frame"
        )


def describe_unroll(config: UnrollConfig) -> str:
    """The start-up log's line for an unroll that runs."""
    return (
        f"unrolled training: each window also rolled out {config.frames} frames through its own frames, weight {config.weight:g}"
        + (f", in {config.share:.0%} of the batches" if config.share < 1 else "")
        + ("; its rows train the rollout's age tables only" if config.trains == "age" else "")
        + (f"; the age tables learn at {config.age_lr:g}x train.lr" if config.age_lr != 1 else "")
    )


def draw_branch(length: int, frames: int, generator: torch.Generator) -> int:
    """The batch's branch position b, uniform in 1 .. length - frames."""
    return int(torch.randint(1, length - frames + 1, (1,), device=generator.device, generator=generator))


def unrolled(
    model: torch.nn.Module,
    parts: dict,
    stepper: FrameStepper,
    branch: int,
    frames: int,
    columns: torch.Tensor | None = None,
    through: bool = True,
) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Each window rolled out from position `branch` for `frames` frames, with gradients
    (scheduled_sampling.roll_out over the window's first branch + frames positions); with `through`
    False each own frame is read back without its gradient (train.unroll.gradient "local").

    Returns (preds, own_float (B, n, F), own_int (B, n, I)): own frame k is frame s+branch+k as the
    rollout made it and the model read it, and preds[k] the model's prediction of frame s+branch+k+1
    from it (the model's dict, "float" (B, T), field -> (B, 2, V)). With `columns` (float column
    indices), only those columns are the rollout's and the rest of each own frame is the true one.
    parts: SequenceParts'.
    """
    end = branch + frames
    window = {key: parts[key][:, :end] for key in ("float_in", "int_in", "float_next", "next_ctrl")}
    rolled = (torch.arange(end, device=parts["float_in"].device) >= branch).expand(len(parts["float_in"]), end)  # (B, end)
    rollout = roll_out(model, window, stepper, rolled, columns, through)
    return rollout.preds[1:], rollout.read_float[:, branch:], rollout.read_int[:, branch:]


@contextmanager
def only_age_trains(model: torch.nn.Module):
    """Within it, only the model's rollout age tables (model.RolloutAge) record gradients: every other
    parameter is set not to require them, and is set back on the way out."""
    core = getattr(model, "module", model)
    frozen = [p for name, p in core.named_parameters() if p.requires_grad and not name.startswith(AGE_PARAMETERS)]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def rolled_columns(fields: str, layout: FrameLayout) -> tuple[int, ...] | None:
    """The float columns an own frame takes from the rollout for `fields` (None: every column)."""
    if fields == "all":
        return None
    velocity = layout.float_target_columns[layout.float_blocks["velocity"]] if fields == "motion" else ()
    return tuple(layout.moving_columns) + tuple(velocity)  # x, y of both players (+ their speeds)


class Unroll:
    """train.unroll for one layout, on one device: rows(model, parts, generator) -> the rolled-out
    targets as rows of card examples, N = B * n: (pred rows, target rows), laid out as
    `sequence.position_rows`' with weight = config.weight where the position is a target."""

    def __init__(self, config: UnrollConfig, layout: FrameLayout, builder: SequenceParts, stepper: FrameStepper, device):
        self.config, self.builder, self.stepper = config, builder, stepper
        columns = rolled_columns(config.fields, layout)
        self.columns = None if columns is None else torch.tensor(columns, device=device)

    def chosen(self, generator: torch.Generator) -> bool:
        """Whether this batch unrolls: always at share 1 (drawing nothing), else with probability share."""
        if self.config.share >= 1:
            return True
        return bool(torch.rand((), device=generator.device, generator=generator) < self.config.share)

    def rows(self, model: torch.nn.Module, parts: dict, generator: torch.Generator) -> tuple[dict, dict]:
        frames = self.config.frames
        branch = draw_branch(parts["target_mask"].shape[1], frames, generator)
        with only_age_trains(model) if self.config.trains == "age" else nullcontext():
            preds, own_float, own_int = unrolled(
                model, parts, self.stepper, branch, frames, self.columns, self.config.gradient == "through"
            )
        targets = slice(branch, branch + frames)
        pred_rows = {key: torch.stack([p[key] for p in preds], dim=1).flatten(0, 1) for key in preds[0]}  # (N, ...)
        rows = {
            "float_tgt": self.builder.float_targets(own_float, parts["float_next"][:, targets]).flatten(0, 1),  # (N, T)
            "int_tgt": parts["int_tgt"][:, targets].flatten(0, 1),  # (N, 12)
            "hold": parts["hold"][:, targets].flatten(0, 1),  # (N, 2): whether the true players stay put
            "int_ctx": own_int.flatten(0, 1)[:, None],  # (N, 1, I)
            "weight": parts["target_mask"][:, targets].flatten().float() * self.config.weight,  # (N,)
        }
        return pred_rows, rows


def join_rows(first: tuple[dict, dict], second: tuple[dict, dict]) -> tuple[dict, dict]:
    """Two (pred rows, target rows) pairs as one, rows of `first` then of `second`."""
    return tuple({key: torch.cat([a[key], b[key]]) for key in a} for a, b in zip(first, second))
