"""Scheduled sampling (spec section 6): inputs made less perfect during training, from the second epoch on.

From epoch index 1 on, at a strength annealed as min(1, epoch / anneal_epochs) (`strength`):
- mode "noise" (the run card's): Gaussian noise on the continuous and velocity columns of both
  players. The card objective perturbs the last `frames` context frames of a fraction `rate` of the
  examples (`add_context_noise`); the sequence objective, where every frame is some position's last
  context frame, perturbs a fraction `rate` of the input frames (`add_frame_noise`). The targets keep
  the reference's meaning: deltas stay relative to the clean frame (the noise comes after the targets).
- mode "model" (sequence objective only): true scheduled sampling. A first pass without gradients
  predicts every frame of the window from the real frames before it; a fraction `rate` of the input
  frames are then replaced by those predictions, made into frames as a rollout makes them
  (`FrameStepper.frame`), and the delta targets are taken against the frame the model now sees, so
  that a prediction added to it lands on the true next frame (`own_frames`, `substitute`).
"""

from __future__ import annotations

import torch

from melee_model.config import ScheduledSamplingConfig
from melee_model.layout import FrameLayout
from melee_model.rollout import FrameStepper
from melee_model.sequence import SequenceParts

NOISY_GROUPS = ("continuous", "velocity")
MODES = ("noise", "model")


def noisy_columns(layout: FrameLayout, device) -> torch.Tensor:
    """(n,) int64: the float columns the noise perturbs, both players'."""
    schema = layout.schema
    columns = [i for p in (0, 1) for g in NOISY_GROUPS for i in schema.float_indices(player=p, group=g)]
    return torch.tensor(columns, device=device)


def strength(epoch: int, config: ScheduledSamplingConfig) -> float:
    """How much of `rate` (and of `noise`) applies in `epoch`: 0 in the first epoch or at rate 0."""
    if config.rate <= 0 or epoch == 0:
        return 0.0
    return min(1.0, epoch / config.anneal_epochs) if config.anneal_epochs else 1.0


def add_context_noise(float_ctx: torch.Tensor, columns: torch.Tensor, epoch: int, config: ScheduledSamplingConfig, generator: torch.Generator) -> None:
    """Perturb float_ctx (B, K, F) in place; nothing in the first epoch or at rate 0."""
    scale = strength(epoch, config)
    if scale == 0:
        return
    batch, device = float_ctx.shape[0], float_ctx.device
    chosen = torch.rand(batch, device=device, generator=generator) < config.rate * scale  # (B,)
    frames = min(config.frames, float_ctx.shape[1])
    noise = torch.randn(batch, frames, len(columns), device=device, generator=generator) * config.noise * scale  # (B, frames, n)
    float_ctx[:, -frames:, columns] += noise * chosen[:, None, None]


def add_frame_noise(float_in: torch.Tensor, columns: torch.Tensor, epoch: int, config: ScheduledSamplingConfig, generator: torch.Generator) -> None:
    """Perturb a fraction `rate` of the frames of float_in (B, L, F) in place; nothing in the first epoch."""
    scale = strength(epoch, config)
    if scale == 0:
        return
    batch, length, device = float_in.shape[0], float_in.shape[1], float_in.device
    chosen = torch.rand(batch, length, device=device, generator=generator) < config.rate * scale  # (B, L)
    noise = torch.randn(batch, length, len(columns), device=device, generator=generator) * config.noise * scale  # (B, L, n)
    float_in[..., columns] += noise * chosen[..., None]


@torch.no_grad()
def own_frames(model: torch.nn.Module, parts: dict, stepper: FrameStepper) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's frames s+1 .. s+L as the model predicts them from the real frames before: (B, L, F)
    float32 and (B, L, I) int64. One teacher-forced pass over the window (parts: SequenceParts')."""
    pred = model(parts["float_in"], parts["int_in"], parts["next_ctrl"])  # (B, L, ...)
    rows = {key: value.flatten(0, 1) for key, value in pred.items()}  # (B*L, ...)
    before_float, before_int = parts["float_in"].flatten(0, 1), parts["int_in"].flatten(0, 1)  # (B*L, F), (B*L, I)
    floats, ints = stepper.frame(before_float, before_int, rows, parts["float_next"].flatten(0, 1))
    shape = parts["float_in"].shape[:2]
    return floats.unflatten(0, shape), ints.unflatten(0, shape)  # (B, L, F), (B, L, I)


def substitute(parts: dict, builder: SequenceParts, own_float: torch.Tensor, own_int: torch.Tensor, chosen: torch.Tensor) -> dict:
    """parts with input frame s+j (j >= 1) replaced by the model's own frame where chosen (B, L) is set
    (chosen[:, 0] is ignored: frame s has no prediction), and the delta targets taken against the frame
    each position now reads. own_float (B, L, F), own_int (B, L, I): `own_frames`."""
    swap = chosen[:, 1:, None]  # (B, L-1, 1): input position j >= 1 is predicted frame j-1
    float_in = torch.cat([parts["float_in"][:, :1], torch.where(swap, own_float[:, :-1], parts["float_in"][:, 1:])], dim=1)  # (B, L, F)
    int_in = torch.cat([parts["int_in"][:, :1], torch.where(swap, own_int[:, :-1], parts["int_in"][:, 1:])], dim=1)  # (B, L, I)
    return {**parts, "float_in": float_in, "int_in": int_in, "float_tgt": builder.float_targets(float_in, parts["float_next"])}
