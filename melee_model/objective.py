"""Training objectives: how a batch on the device becomes the model's predictions and the rows the
loss and metrics read (`data.objective`).

- "last" (the run card's): one example per target; the model predicts from the last of its K context
  frames. The rows are the batch itself.
- "sequence": windows of L+1 frames of one game; the model predicts from every position in one causal
  pass (`melee_model.sequence`). The rows are the positions, weighted by target_mask.

`outputs(model, batch)` -> (pred, rows): pred "float" (N, T), field -> (N, 2, V); rows "float_tgt"
(N, T), "int_tgt" (N, 12), "int_ctx" (N, K, I), "hold" (N, 2) (`motion.hold_targets`, from the true
frames) and, for sequences, "weight" (N,): what
`compute_losses` and `MetricAccumulator.update` take. Given the epoch and a generator (training),
scheduled sampling applies first (melee_model.scheduled_sampling), and with train.unroll the sequence
objective adds the rows of a short rollout trained through the model's own frames (melee_model.unroll). `count(batch)` is the number of
targets of a loader batch, read on the host.
"""

from __future__ import annotations

import torch

from melee_encode.errors import ConfigError
from melee_model.config import ExperimentConfig, ScheduledSamplingConfig, UnrollConfig
from melee_model.layout import FrameLayout
from melee_model.motion import hold_targets
from melee_model.scheduled_sampling import MODES, ContextNoise, anneal, branches, own_frames, own_rollouts, substitute
from melee_model.sequence import SequenceParts, position_rows
from melee_model.stepper import FrameStepper
from melee_model.unroll import Unroll, check_unroll, join_rows

OBJECTIVES = ("last", "sequence")


class LastObjective:
    """The run card's: batches of K-frame examples (float_ctx, int_ctx, next_ctrl, float_tgt, int_tgt)."""

    name = "last"

    def __init__(self, layout: FrameLayout, sampling: ScheduledSamplingConfig, device):
        if sampling.mode != "noise":
            raise ConfigError(
                f"train.scheduled_sampling.mode {sampling.mode!r} needs data.objective 'sequence'; the card objective has 'noise' only"
            )
        self.layout = layout
        self.noise = ContextNoise(layout, sampling, device)

    def outputs(
        self, model: torch.nn.Module, batch: dict, epoch: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[dict, dict]:
        batch["hold"] = hold_targets(self.layout, batch["float_tgt"])  # (B, 2), before noisy targets move
        if epoch is not None:
            self.noise.apply(batch, epoch, generator)
        return model(batch["float_ctx"], batch["int_ctx"], batch["next_ctrl"]), batch

    @staticmethod
    def count(batch: dict) -> int:
        return len(batch["example_id"])


class SequenceObjective:
    """Every position of a window (float_seq, int_seq, target_mask: the loader's sequence batches)."""

    name = "sequence"

    def __init__(self, layout: FrameLayout, sampling: ScheduledSamplingConfig, device, unroll: UnrollConfig):
        self.parts = SequenceParts(layout, device)
        self.sampling = sampling
        unrolls = unroll.frames > 0
        self.noise = ContextNoise(layout, sampling, device)
        self.stepper = FrameStepper(layout, device) if sampling.mode != "noise" or unrolls else None
        self.unroll = Unroll(unroll, layout, self.parts, self.stepper, device) if unrolls else None

    def outputs(
        self, model: torch.nn.Module, batch: dict, epoch: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[dict, dict]:
        parts = self.parts(batch)
        if epoch is not None:
            parts = self._sample(model, parts, epoch, generator)
        pred = model(parts["float_in"], parts["int_in"], parts["next_ctrl"])  # (B, L, ...)
        rows = position_rows(pred, parts)
        if epoch is None or self.unroll is None or epoch < self.unroll.config.start_epoch or not self.unroll.chosen(generator):
            return rows
        return join_rows(rows, self.unroll.rows(model, parts, generator))

    def _sample(self, model: torch.nn.Module, parts: dict, epoch: int, generator: torch.Generator) -> dict:
        if self.sampling.mode == "noise":
            return self.noise.apply_frames(parts, epoch, generator)
        rate = self.sampling.rate * anneal(epoch, self.sampling)
        if rate == 0:
            return parts
        shape, device = parts["target_mask"].shape, parts["float_in"].device
        if self.sampling.mode == "model":
            chosen = torch.rand(shape, device=device, generator=generator) < rate  # (B, L)
            return substitute(parts, self.parts, *own_frames(model, parts, self.stepper), chosen, self.sampling.targets)
        rolled = branches(*shape, rate, generator, device)  # (B, L)
        if not rolled.any():
            return parts
        return substitute(parts, self.parts, *own_rollouts(model, parts, self.stepper, rolled), rolled, self.sampling.targets)

    @staticmethod
    def count(batch: dict) -> int:
        return int(batch["target_mask"].sum())


def build_objective(config: ExperimentConfig, layout: FrameLayout, device) -> LastObjective | SequenceObjective:
    """The objective named by data.objective, refusing combinations that cannot train."""
    objective, sampling = config.data.objective, config.train.scheduled_sampling
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown data.objective {objective!r}; options: {', '.join(OBJECTIVES)}")
    if sampling.mode not in MODES:
        raise ConfigError(f"unknown train.scheduled_sampling.mode {sampling.mode!r}; options: {', '.join(MODES)}")
    if objective == "sequence" and config.model.arch != "mamba2":
        raise ConfigError(
            f"data.objective 'sequence' needs a causal sequence model (model.arch mamba2); {config.model.arch!r} trains with the card objective 'last' only"
        )
    check_unroll(config.train.unroll, objective, config.data.seq_len, config.model.rollout_age)
    if objective == "sequence":
        return SequenceObjective(layout, sampling, device, config.train.unroll)
    return LastObjective(layout, sampling, device)
