"""Scheduled sampling (spec section 6): the run card's noise on the last context frames.

From the second epoch on (epoch index 1), a fraction of the examples of each batch get Gaussian noise
on the continuous and velocity columns of both players in their last `frames` context frames, at a
strength annealed as min(1, epoch / anneal_epochs). The targets keep the reference's meaning: deltas
stay relative to the clean last context frame (the noise is applied after the batch was built).
"""

from __future__ import annotations

import torch

from melee_model.config import ScheduledSamplingConfig
from melee_model.layout import FrameLayout

NOISY_GROUPS = ("continuous", "velocity")


def noisy_columns(layout: FrameLayout, device) -> torch.Tensor:
    """(n,) int64: the float columns the noise perturbs, both players'."""
    schema = layout.schema
    columns = [i for p in (0, 1) for g in NOISY_GROUPS for i in schema.float_indices(player=p, group=g)]
    return torch.tensor(columns, device=device)


def add_context_noise(float_ctx: torch.Tensor, columns: torch.Tensor, epoch: int, config: ScheduledSamplingConfig, generator: torch.Generator) -> None:
    """Perturb float_ctx (B, K, F) in place; nothing in the first epoch or at rate 0."""
    strength = min(1.0, epoch / config.anneal_epochs) if config.anneal_epochs else 1.0
    if config.rate <= 0 or epoch == 0 or strength == 0:
        return
    batch, device = float_ctx.shape[0], float_ctx.device
    chosen = torch.rand(batch, device=device, generator=generator) < config.rate * strength  # (B,)
    frames = min(config.frames, float_ctx.shape[1])
    noise = torch.randn(batch, frames, len(columns), device=device, generator=generator) * config.noise * strength  # (B, frames, n)
    float_ctx[:, -frames:, columns] += noise * chosen[:, None, None]
