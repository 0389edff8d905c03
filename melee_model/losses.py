"""The training loss (spec section 5): per-block float losses, per-field cross-entropies, their weighted sum.

total = 1.0 MSE(continuous) + 0.5 MSE(velocity) + 0.5 MSE(dynamics) + 0.5 BCE-with-logits(binary)
        + 2.0 CE(action) + 0.5 CE(jumps_left) + 0.3 CE(l_cancel, hurtbox_state, ground, last_attack_landed),
with the weights read from LossConfig (one attribute per term) and every CE the mean over both players.
Everything stays on the device: no .item(), no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from melee_model.config import LossConfig
from melee_model.layout import FLOAT_BLOCKS, TARGET_FIELDS, FrameLayout

FLOAT_TERMS = tuple(name for name, _ in FLOAT_BLOCKS)
# Every term of the total, each named like its LossConfig weight; "total" is the weighted sum.
LOSS_TERMS = FLOAT_TERMS + TARGET_FIELDS


def player_targets(batch: dict, field: str) -> torch.Tensor:
    """The target class of a field for both players: int_tgt (B, int_target_dim) -> (B, 2) int64.

    int_tgt holds p0's TARGET_FIELDS, then p1's, in that order (FrameLayout.int_target_columns)."""
    return by_player(batch["int_tgt"])[:, :, TARGET_FIELDS.index(field)].long()  # (B, 2)


def by_player(int_tgt: torch.Tensor) -> torch.Tensor:
    """int_tgt (B, 2 * len(TARGET_FIELDS)) -> (B, 2, len(TARGET_FIELDS)), a view."""
    return int_tgt.unflatten(1, (2, len(TARGET_FIELDS)))


def compute_losses(pred: dict, batch: dict, layout: FrameLayout, weights: LossConfig) -> dict[str, torch.Tensor]:
    """Scalar loss tensors: one per term of LOSS_TERMS, and "total".

    pred: the model's dict, "float" (B, T) and field -> (B, 2, V); batch: "float_tgt" (B, T) float,
    "int_tgt" (B, int_target_dim) int. Predictions are cast to float32 first, since under autocast
    they may be bfloat16.
    """
    pred_float, target_float = pred["float"].float(), batch["float_tgt"].float()
    losses = {}
    for name, block in layout.float_blocks.items():
        p, t = pred_float[:, block], target_float[:, block]
        losses[name] = F.binary_cross_entropy_with_logits(p, t) if name == "binary" else F.mse_loss(p, t)
    targets = by_player(batch["int_tgt"]).long()  # (B, 2, fields)
    for k, field in enumerate(TARGET_FIELDS):
        logits = pred[field].float()  # (B, 2, V)
        # Flattening players into rows makes the mean run over B*2 rows: the mean of both players' CEs.
        losses[field] = F.cross_entropy(logits.flatten(0, 1), targets[:, :, k].flatten())
    losses["total"] = sum(getattr(weights, name) * losses[name] for name in LOSS_TERMS)
    return losses
