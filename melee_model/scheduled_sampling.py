"""Scheduled sampling (spec section 6): inputs made less perfect during training, from the second epoch on.

From epoch index 1 on, at a strength annealed as min(1, epoch / anneal_epochs) (`anneal`), `mode`:
- "noise" (the run card's): Gaussian noise on the continuous and velocity columns of both players,
  applied after the batch was built (`ContextNoise`). The card objective perturbs the last `frames`
  context frames of a fraction `rate` of the examples; the sequence objective, where every frame is
  some position's last context frame, perturbs a fraction `rate` of the input frames.
- "model" (sequence objective only): true scheduled sampling. A first pass without gradients predicts
  every frame of the window from the real frames before it; a fraction `rate` of the input frames are
  then replaced by those predictions, made into frames as a rollout makes them (`FrameStepper.frame`;
  `own_frames`, `substitute`). Each replaced frame is one step off the truth.
- "rollout" (sequence objective only): a fraction `rate` of the windows is rolled out, as evaluation
  rolls a model out: from a branch position drawn uniformly in 1 .. L-1, every later input frame is
  the model's own prediction from its own frames before it, one recurrent step per frame without
  gradients (`own_rollouts`, `branches`). The model then trains on the frames a rollout of 1 .. L-1
  frames reaches, and with targets "noisy" learns the way back from its drift to the true frames.

`targets` says what the delta targets are relative to:
- "clean" (the run card's, and our default): the clean last context frame, so a noised example asks
  the model for the true next frame minus the true last frame it no longer sees;
- "noisy": the noised last context frame (the target becomes true next frame minus what the model
  saw), which is what a rollout's next step needs. It requires deltas taken from the last context
  frame (not data.lookahead_delta "from_previous" with a lookahead). In mode "model" likewise: the
  frame the model reads, its own prediction where substituted.

The generator is the caller's: the trainer seeds one per micro-batch (seed, step, micro-batch, rank),
so every micro-batch of an accumulated step draws its own noise and mask, and a resumed run the same.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from melee_encode.errors import ConfigError
from melee_model.config import ScheduledSamplingConfig
from melee_model.layout import FrameLayout
from melee_model.sequence import SequenceParts
from melee_model.stepper import FrameStepper

NOISY_GROUPS = ("continuous", "velocity")
TARGET_MODES = ("clean", "noisy")
MODES = ("noise", "model", "rollout")


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
            raise ConfigError(
                "train.scheduled_sampling.targets 'noisy' needs deltas from the last context frame; with data.lookahead_delta 'from_previous' they are taken from frame t+d-1"
            )
        self.config = config
        columns = noisy_columns(layout)
        self.columns = torch.tensor(columns, dtype=torch.long, device=device)  # (n,)
        # Where each noised column's delta target sits in float_tgt (every noised column has one).
        positions = [layout.float_target_columns.index(c) for c in columns]
        self.target_positions = torch.tensor(positions, dtype=torch.long, device=device)  # (n,)

    def apply(self, batch: dict, epoch: int, generator: torch.Generator) -> None:
        strength = anneal(epoch, self.config)
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

    def apply_frames(self, parts: dict, epoch: int, generator: torch.Generator) -> dict:
        """The sequence objective's noise: a fraction `rate` of the input frames of parts["float_in"]
        (B, L, F) perturbed (a copy), and with targets "noisy" the deltas of those positions in
        parts["float_tgt"] (B, L, T) moved to the noised frame. Returns the parts, changed or not."""
        strength = anneal(epoch, self.config)
        if strength == 0:
            return parts
        config, float_in = self.config, parts["float_in"].clone()  # parts["float_in"] views the batch's frames
        (size, length), device = float_in.shape[:2], float_in.device
        chosen = torch.rand(size, length, device=device, generator=generator) < config.rate * strength  # (B, L)
        noise = torch.randn(size, length, len(self.columns), device=device, generator=generator) * config.noise * strength  # (B, L, n)
        noise = noise * chosen[..., None]
        float_in[..., self.columns] += noise
        parts = {**parts, "float_in": float_in}
        if config.targets == "noisy":
            parts["float_tgt"] = parts["float_tgt"].clone()
            parts["float_tgt"][..., self.target_positions] -= noise
        return parts


def anneal(epoch: int, config: ScheduledSamplingConfig) -> float:
    """The anneal factor of `epoch` (0-based) for rate and noise; 0 means none at all."""
    if config.rate <= 0 or epoch == 0:
        return 0.0
    return min(1.0, epoch / config.anneal_epochs) if config.anneal_epochs else 1.0


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


def branches(size: int, length: int, rate: float, generator: torch.Generator, device) -> torch.Tensor:
    """Which input positions a rollout replaces: (B, L) bool, True from a window's branch position on.

    Each of `size` windows is rolled out with probability `rate`, from a branch position uniform in
    1 .. L-1 (position 0 has no prediction to replace it); the others keep every real frame.
    """
    rolled = torch.rand(size, device=device, generator=generator) < rate  # (B,)
    branch = torch.randint(1, max(length, 2), (size,), device=device, generator=generator)  # (B,)
    branch = torch.where(rolled, branch, torch.full_like(branch, length))  # (B,): L keeps the window real
    return torch.arange(length, device=device) >= branch[:, None]  # (B, L)


class Rollout(NamedTuple):
    """What `roll_out` made: preds[k], the model's dict ("float" (B, T), field -> (B, 2, V)), is its
    prediction at input position first-1+k (first: the earliest branch); own_float (B, L, F) and
    own_int (B, L, I) hold frames s+1 .. s+L as predicted (the real ones before first-1); read_float
    (B, L, F) and read_int (B, L, I) the input frames s .. s+L-1 the model read."""

    preds: list[dict]
    own_float: torch.Tensor
    own_int: torch.Tensor
    read_float: torch.Tensor
    read_int: torch.Tensor


def roll_out(
    model: torch.nn.Module,
    parts: dict,
    stepper: FrameStepper,
    rolled: torch.Tensor,
    columns: torch.Tensor | None = None,
    through: bool = True,
) -> Rollout:
    """Windows rolled out from their branch positions, one recurrent step per frame (FrameStackMamba2's
    prefill, step and predict, with the replay's controls); gradients as the caller has them on.

    Input position j reads the real frame s+j where rolled[:, j] (B, L) is unset, else the model's own
    frame s+j predicted one step before; with `columns` (float column indices) only those columns of
    it, the rest of the frame (ints included) staying real. With `through` False an own frame is read
    back detached: a prediction's gradient stops at the frames it read. Each prediction is told how
    many own frames it read (model.rollout_age). The real frames up to the earliest branch are run in
    one prefill, without gradients.
    """
    core = getattr(model, "module", model)  # the model itself under DistributedDataParallel
    real_float, real_int, length = parts["float_in"], parts["int_in"], rolled.shape[1]  # (B, L, F), (B, L, I)
    first = int(torch.nonzero(rolled.any(0))[0]) if rolled.any() else length  # the earliest branch
    ages = rolled.long().cumsum(1)  # (B, L): how many own frames input position j and those before it are
    with torch.no_grad():
        x, state = core.prefill(real_float[:, :first], real_int[:, :first])  # (B, D)
    last_float, last_int = real_float[:, first - 1], real_int[:, first - 1]  # (B, F), (B, I)
    preds, own, read = [], [], []
    for j in range(first - 1, length):
        pred = core.predict(x, parts["next_ctrl"][:, j], state.step, ages[:, j])
        own_float, own_int = stepper.frame(last_float, last_int, pred, parts["float_next"][:, j])  # frame s+j+1
        preds.append(pred)
        own.append((own_float, own_int))
        if not through:
            own_float = own_float.detach()
        if j + 1 < length:
            swap = rolled[:, j + 1, None]  # (B, 1)
            if columns is None:
                mixed_float, mixed_int = own_float, own_int
            else:
                mixed_float, mixed_int = real_float[:, j + 1].clone(), real_int[:, j + 1]
                mixed_float[:, columns] = own_float[:, columns]
            last_float = torch.where(swap, mixed_float, real_float[:, j + 1])  # (B, F)
            last_int = torch.where(swap, mixed_int, real_int[:, j + 1])  # (B, I)
            read.append((last_float, last_int))
            x, state = core.step(last_float, last_int, state)  # (B, D)
    stacked = lambda frames, k: torch.stack([frame[k] for frame in frames], dim=1)  # noqa: E731
    return Rollout(
        preds,
        torch.cat([parts["float_next"][:, : first - 1], stacked(own, 0)], dim=1),  # (B, L, F)
        torch.cat([real_int[:, 1:first], stacked(own, 1)], dim=1),  # (B, L, I)
        torch.cat([real_float[:, :first], *([stacked(read, 0)] if read else [])], dim=1),  # (B, L, F)
        torch.cat([real_int[:, :first], *([stacked(read, 1)] if read else [])], dim=1),  # (B, L, I)
    )


@torch.no_grad()
def own_rollouts(model: torch.nn.Module, parts: dict, stepper: FrameStepper, rolled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's frames s+1 .. s+L as a rollout from rolled (B, L)'s branches predicts them: (B, L, F)
    float32 and (B, L, I) int64 (`roll_out`'s own frames), laid out as `own_frames`' so that
    `substitute(..., rolled)` feeds them back. Frames predicted before the earliest branch are never
    read back and are left as the real ones."""
    rollout = roll_out(model, parts, stepper, rolled)
    return rollout.own_float, rollout.own_int


def substitute(
    parts: dict, builder: SequenceParts, own_float: torch.Tensor, own_int: torch.Tensor, chosen: torch.Tensor, targets: str = "noisy"
) -> dict:
    """parts with input frame s+j (j >= 1) replaced by the model's own frame where chosen (B, L) is set
    (chosen[:, 0] is ignored: frame s has no prediction); with targets "noisy" the delta targets are
    taken against the frame each position now reads. own_float (B, L, F), own_int (B, L, I): `own_frames`."""
    swap = chosen[:, 1:, None]  # (B, L-1, 1): input position j >= 1 is predicted frame j-1
    float_in = torch.cat([parts["float_in"][:, :1], torch.where(swap, own_float[:, :-1], parts["float_in"][:, 1:])], dim=1)  # (B, L, F)
    int_in = torch.cat([parts["int_in"][:, :1], torch.where(swap, own_int[:, :-1], parts["int_in"][:, 1:])], dim=1)  # (B, L, I)
    substituted = {**parts, "float_in": float_in, "int_in": int_in}
    if targets == "noisy":
        substituted["float_tgt"] = builder.float_targets(float_in, parts["float_next"])
    return substituted
