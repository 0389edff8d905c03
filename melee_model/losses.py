"""The training loss (spec section 5): per-block float losses, per-field cross-entropies, their weighted sum.

total = 1.0 MSE(continuous) + 0.5 MSE(velocity) + 0.5 MSE(dynamics) + 0.5 BCE-with-logits(binary)
        + 2.0 CE(action) + 0.5 CE(jumps_left) + 0.3 CE(l_cancel, hurtbox_state, ground, last_attack_landed),
with the weights read from LossConfig (one attribute per term) and every CE the mean over both players.
Everything stays on the device: no .item(), no host sync.

With loss.float_loss "huber" the MSEs become the squared error below loss.huber_delta (or the
block's loss.huber_deltas) and linear above it. The float blocks' errors are in encoded units (the
card's), or with loss.float_weighting "target_std" in units of each target's spread (`float_scale`:
the train split's standard deviation of each float target, from `ExampleSource.float_target_std`;
the binary block's BCE is left as is; a checkpoint keeps them, so evaluation on another store
divides by the same).

With model.hold_gate the model's dict also holds "hold" (B, 2), a logit per player that its x and y
stay exactly as they are, and the batch "hold" (B, 2), whether they do (`motion.hold_targets`): one
more term, "hold", a binary cross-entropy weighted by loss.hold.

A batch may carry "weight" (B,), one per example (the sequence objective's rows: 1 for a target
position, 0 for the others); each term is then the weighted mean over examples, i.e. the mean over
the target positions alone. Without it every example counts once, as in the run card.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from melee_encode.errors import ConfigError
from melee_model.config import LossConfig
from melee_model.layout import FLOAT_BLOCKS, TARGET_FIELDS, FrameLayout

FLOAT_TERMS = tuple(name for name, _ in FLOAT_BLOCKS)
# Every term of the total, each named like its LossConfig weight; "total" is the weighted sum.
LOSS_TERMS = FLOAT_TERMS + TARGET_FIELDS
FLOAT_WEIGHTINGS = ("encoded", "target_std")
FLOAT_LOSSES = ("mse", "huber")
HUBER_BLOCKS = tuple(name for name in FLOAT_TERMS if name != "binary")  # the blocks loss.float_loss measures
MIN_STD = 1e-4  # a target that never changes in the sample still gets a finite scale


def float_scale(layout: FrameLayout, config: LossConfig, target_std, device, given: list[float] | None = None) -> torch.Tensor | None:
    """The divisor of each float target's error for `config.float_weighting`: None for "encoded";
    for "target_std", (T,) float32 with the std from `target_std()` (called only then: it reads the
    store), floored at MIN_STD, and 1 for the binary block; or `given`, a scale made so before (a
    checkpoint's), as it is."""
    if config.float_weighting not in FLOAT_WEIGHTINGS:
        raise ConfigError(f"loss.float_weighting must be one of {', '.join(FLOAT_WEIGHTINGS)}, got {config.float_weighting!r}")
    if config.float_weighting == "encoded":
        return None
    if given is not None:
        if len(given) != layout.float_target_dim:
            raise ConfigError(f"a float scale of {len(given)} targets for a layout of {layout.float_target_dim}")
        return torch.tensor(given, dtype=torch.float32, device=device)
    scale = np.maximum(np.asarray(target_std(), np.float32), MIN_STD)  # (T,)
    scale[layout.float_blocks["binary"]] = 1.0
    return torch.as_tensor(scale, device=device)


def player_targets(batch: dict, field: str) -> torch.Tensor:
    """The target class of a field for both players: int_tgt (B, int_target_dim) -> (B, 2) int64.

    int_tgt holds p0's TARGET_FIELDS, then p1's, in that order (FrameLayout.int_target_columns)."""
    return by_player(batch["int_tgt"])[:, :, TARGET_FIELDS.index(field)].long()  # (B, 2)


def by_player(int_tgt: torch.Tensor) -> torch.Tensor:
    """int_tgt (B, 2 * len(TARGET_FIELDS)) -> (B, 2, len(TARGET_FIELDS)), a view."""
    return int_tgt.unflatten(1, (2, len(TARGET_FIELDS)))


def compute_losses(
    pred: dict, batch: dict, layout: FrameLayout, weights: LossConfig, scale: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Scalar loss tensors: one per term of LOSS_TERMS, "hold" with the hold gate, and "total".

    pred: the model's dict, "float" (B, T) and field -> (B, 2, V) (and "hold" (B, 2) with the hold
    gate); batch: "float_tgt" (B, T) float, "int_tgt" (B, int_target_dim) int, "hold" (B, 2) with the
    gate, optionally "weight" (B,); scale (T,): `float_scale`'s divisor
    of each float target's error, or None (encoded units). Predictions are cast to float32 first,
    since under autocast they may be bfloat16.
    """
    pred_float, target_float = pred["float"].float(), batch["float_tgt"].float()
    if scale is not None:
        pred_float, target_float = pred_float / scale, target_float / scale  # (B, T)
    weight = batch.get("weight")
    losses = {}
    for name, block in layout.float_blocks.items():
        p, t = pred_float[:, block], target_float[:, block]
        loss = F.binary_cross_entropy_with_logits if name == "binary" else _float_loss(weights, name)
        losses[name] = loss(p, t) if weight is None else _weighted_mean(loss(p, t, reduction="none").mean(1), weight)
    targets = by_player(batch["int_tgt"]).long()  # (B, 2, fields)
    for k, field in enumerate(TARGET_FIELDS):
        logits = pred[field].float()  # (B, 2, V)
        # Flattening players into rows makes the mean run over B*2 rows: the mean of both players' CEs.
        if weight is None:
            losses[field] = F.cross_entropy(logits.flatten(0, 1), targets[:, :, k].flatten())
        else:
            per_example = F.cross_entropy(logits.transpose(1, 2), targets[:, :, k], reduction="none").mean(1)  # (B,)
            losses[field] = _weighted_mean(per_example, weight)
    losses["total"] = sum(getattr(weights, name) * losses[name] for name in LOSS_TERMS)
    if "hold" in pred:
        held = F.binary_cross_entropy_with_logits(pred["hold"].float(), batch["hold"], reduction="none").mean(-1)  # (B,)
        losses["hold"] = held.mean() if weight is None else _weighted_mean(held, weight)
        losses["total"] = losses["total"] + weights.hold * losses["hold"]
    return losses


def _float_loss(config: LossConfig, block: str):
    """The error function of float block `block` (not binary): (pred, target, reduction) -> loss."""
    if config.float_loss == "mse":
        return F.mse_loss
    if config.float_loss == "huber":  # x**2 below delta, 2 delta |x| - delta**2 above: the squared error's slope at delta
        delta = huber_delta(config, block)
        return lambda p, t, reduction="mean": 2.0 * F.huber_loss(p, t, reduction=reduction, delta=delta)
    raise ConfigError(f"loss.float_loss must be one of {', '.join(FLOAT_LOSSES)}, got {config.float_loss!r}")


def huber_delta(config: LossConfig, block: str) -> float:
    """Block `block`'s Huber delta: loss.huber_deltas[block], else loss.huber_delta."""
    unknown = sorted(set(config.huber_deltas) - set(HUBER_BLOCKS))
    if unknown:
        raise ConfigError(f"loss.huber_deltas: unknown block(s) {', '.join(unknown)}; options: {', '.join(HUBER_BLOCKS)}")
    key = f"loss.huber_deltas.{block}" if block in config.huber_deltas else "loss.huber_delta"
    delta = config.huber_deltas.get(block, config.huber_delta)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or delta <= 0:
        raise ConfigError(f"{key} must be a positive number, got {delta!r}")
    return float(delta)


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(values * weight) / sum(weight), values and weight (B,); 0 when no weight is set."""
    return (values * weight).sum() / weight.sum().clamp(min=1.0)
