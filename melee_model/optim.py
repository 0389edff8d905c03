"""The optimizer and its learning-rate schedule (spec section 6: AdamW, cosine)."""

from __future__ import annotations

import math

import torch


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on matrices and embeddings only, as nanoGPT; never on biases, norms, or the
    SSM parameters mamba-ssm marks `_no_weight_decay` (dt_bias, A_log, D)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.dim() < 2 or getattr(parameter, "_no_weight_decay", False) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def cosine_schedule(total: int, warmup: int, floor: float):
    """lr multiplier per optimizer step: linear warmup, then cosine from 1 to `floor`."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
