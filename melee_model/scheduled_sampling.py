"""Scheduled sampling (spec section 6): the run card's noise on the last context frames.

From the second epoch on (epoch index 1), a fraction of the examples of each batch get Gaussian noise
on the continuous and velocity columns of both players in their last `frames` context frames, at a
strength annealed as min(1, epoch / anneal_epochs). The noise is applied after the batch was built.

`targets` says what the delta targets are relative to:
- "clean" (the run card's, and our default): the clean last context frame, so a noised example asks
  the model for the true next frame minus the true last frame it no longer sees;
- "noisy": the noised last context frame (the target becomes true next frame minus what the model
  saw), which is what a rollout's next step needs. It requires deltas taken from the last context
  frame (not data.lookahead_delta "from_previous" with a lookahead).

The generator is the caller's: the trainer seeds one per micro-batch (seed, step, micro-batch, rank),
so every micro-batch of an accumulated step draws its own noise and mask, and a resumed run the same.
"""

from __future__ import annotations

import torch

from melee_encode.errors import ConfigError
from melee_model.config import ScheduledSamplingConfig
from melee_model.layout import FrameLayout

NOISY_GROUPS = ("continuous", "velocity")
TARGET_MODES = ("clean", "noisy")


def noisy_columns(layout: FrameLayout) -> list[int]:
    """The float columns the noise perturbs, both players'."""
    schema = layout.schema
    return [i for p in (0, 1) for g in NOISY_GROUPS for i in schema.float_indices(player=p, group=g)]


def micro_batch_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The seed of one micro-batch's noise: distinct per (step, micro-batch within it, rank)."""
    return hash((seed, step, micro, rank)) & (2**63 - 1)


class ContextNoise:
    """The run card's context noise for one layout, on one device.

    apply(batch, epoch, generator) perturbs batch["float_ctx"] (B, K, F) in place and, with targets
    "noisy", moves batch["float_tgt"] (B, T)'s deltas of the noised columns to the noised last frame.
    """

    def __init__(self, layout: FrameLayout, config: ScheduledSamplingConfig, device):
        if config.targets not in TARGET_MODES:
            raise ConfigError(f"train.scheduled_sampling.targets must be one of {', '.join(TARGET_MODES)}, got {config.targets!r}")
        if config.targets == "noisy" and layout.lookahead and layout.lookahead_delta == "from_previous":
            raise ConfigError("train.scheduled_sampling.targets 'noisy' needs deltas from the last context frame; with data.lookahead_delta 'from_previous' they are taken from frame t+d-1")
        self.config = config
        columns = noisy_columns(layout)
        self.columns = torch.tensor(columns, dtype=torch.long, device=device)  # (n,)
        # Where each noised column's delta target sits in float_tgt (every noised column has one).
        positions = [layout.float_target_columns.index(c) for c in columns]
        self.target_positions = torch.tensor(positions, dtype=torch.long, device=device)  # (n,)

    def strength(self, epoch: int) -> float:
        """The anneal factor of `epoch` (0-based); 0 means no noise at all."""
        config = self.config
        if config.rate <= 0 or epoch == 0:
            return 0.0
        return min(1.0, epoch / config.anneal_epochs) if config.anneal_epochs else 1.0

    def apply(self, batch: dict, epoch: int, generator: torch.Generator) -> None:
        strength = self.strength(epoch)
        if strength == 0:
            return
        config, float_ctx = self.config, batch["float_ctx"]
        size, device = float_ctx.shape[0], float_ctx.device
        chosen = torch.rand(size, device=device, generator=generator) < config.rate * strength  # (B,)
        frames = min(config.frames, float_ctx.shape[1])
        noise = torch.randn(size, frames, len(self.columns), device=device, generator=generator) * config.noise * strength  # (B, frames, n)
        noise = noise * chosen[:, None, None]
        float_ctx[:, -frames:, self.columns] += noise
        if config.targets == "noisy":
            batch["float_tgt"][:, self.target_positions] -= noise[:, -1]  # target - (last + noise)
