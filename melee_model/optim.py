"""The optimizer and its learning-rate schedule (spec section 6: AdamW, cosine).

Two schedules, both a multiplier of `train.lr` per optimizer step (a LambdaLR stepped after every
update, so a checkpoint's step count resumes either exactly):
- "per_step" (ours): linear warmup, then a cosine from 1 to `min_lr_ratio` over every update of the run
  (or over `train.schedule_steps` updates, e.g. the steps a wall-clock budget allows);
- "per_epoch" (the reference's `CosineAnnealingLR(T_max=epochs)`, stepped once after each epoch's
  validation): constant within an epoch, epoch e (0-based) at the cosine's value at e / epochs; for
  2 epochs, lr then lr / 2.
- "per_second" (equal wall-clock comparisons, benchmarks/model_quality.py): linear warmup over
  steps, then a cosine from 1 to `min_lr_ratio` over `train.max_seconds` of wall clock, read when
  each step is taken, so the schedule ends with the run however fast its steps turn out to be. Not
  step-exact: a resumed run starts the clock again, as max_seconds does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from melee_encode.errors import ConfigError
from melee_model.config import TrainConfig
from melee_model.model import AGE_PARAMETERS

LR_SCHEDULES = ("per_step", "per_epoch", "per_second")


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, decay_all: bool = False, age_lr: float = 1.0) -> torch.optim.AdamW:
    """AdamW with decay on matrices and embeddings only, as nanoGPT; never on biases, norms, or the
    SSM parameters mamba-ssm marks `_no_weight_decay` (dt_bias, A_log, D). decay_all: every
    parameter decays (the reference's plain AdamW(model.parameters())), in one group. age_lr other
    than 1: model.rollout_age's tables (`model.AGE_PARAMETERS`) in a group of their own at lr * age_lr,
    without decay (train.unroll.age_lr); the schedule scales every group alike."""
    aged, rest = [], []
    for name, parameter in model.named_parameters():
        (aged if age_lr != 1.0 and name.startswith(AGE_PARAMETERS) else rest).append(parameter)
    if decay_all:
        groups = [{"params": rest, "weight_decay": weight_decay}]
    else:
        decay, no_decay = [], []
        for parameter in rest:
            (no_decay if parameter.dim() < 2 or getattr(parameter, "_no_weight_decay", False) else decay).append(parameter)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if aged:
        groups.append({"params": aged, "weight_decay": 0.0, "lr": lr * age_lr})
    return torch.optim.AdamW(groups, lr=lr)


def lr_multiplier(train: TrainConfig, updates_per_epoch: int, elapsed: Callable[[], float] | None = None):
    """The multiplier of train.lr at each optimizer step (0-based) of the configured schedule;
    elapsed() gives the seconds the run has trained ("per_second" only)."""
    if train.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {train.lr_schedule!r}")
    if train.lr_schedule == "per_second":
        if not train.max_seconds or elapsed is None:
            raise ConfigError("train.lr_schedule 'per_second' needs train.max_seconds: the wall clock its cosine spans")
        return seconds_cosine_schedule(train.max_seconds, train.warmup_steps, train.min_lr_ratio, elapsed)
    if train.lr_schedule == "per_epoch":
        return epoch_cosine_schedule(updates_per_epoch, train.epochs, train.warmup_steps, train.min_lr_ratio)
    return cosine_schedule(train.schedule_steps or train.epochs * updates_per_epoch, train.warmup_steps, train.min_lr_ratio)


def cosine_schedule(total: int, warmup: int, floor: float):
    """lr multiplier per optimizer step: linear warmup, then cosine from 1 to `floor`."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return _cosine(progress, floor)

    return multiplier


def epoch_cosine_schedule(updates_per_epoch: int, epochs: int, warmup: int, floor: float):
    """lr multiplier per optimizer step, constant within each epoch: the cosine at epoch / epochs."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return _cosine(min(1.0, (step // max(1, updates_per_epoch)) / max(1, epochs)), floor)

    return multiplier


def seconds_cosine_schedule(seconds: float, warmup: int, floor: float, elapsed: Callable[[], float]):
    """lr multiplier per optimizer step: linear warmup over steps, then cosine from 1 to `floor` over
    `seconds` of elapsed() (the clock when the multiplier is asked for, i.e. when the step is taken)."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return _cosine(min(1.0, elapsed() / seconds), floor)

    return multiplier


def _cosine(progress: float, floor: float) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
