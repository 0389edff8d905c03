"""The run card's escape hatches (spec section 6) as pure decisions; the trainer acts on them.

- a NaN or inf loss stops the run (the trainer checks it, since it must also save the failing state);
- `track_patience`: the training loss, averaged over windows of batches, has not improved on its best
  for `train.patience_batches` batches;
- `change_acc_verdict`: after the first epoch, validation change_acc is under `train.min_val_change_acc`.
  The figure is the run card's: p0 only (`val_metric/action_change_acc`), as the reference computed
  the 65.6% baseline its 60% kill threshold was set against.
"""

from __future__ import annotations

import math

IMPROVEMENT = 1e-6  # a window's loss must beat the best by this much to count as an improvement


class StopTraining(Exception):
    """An escape hatch (or max_steps) ended the run; the message says which and why. `saved`: the
    hatch wrote its own checkpoint, so the run's end must not move `latest`."""

    def __init__(self, message: str, saved: bool = False):
        super().__init__(message)
        self.saved = saved


def track_patience(best: float, since_best: int, window_loss: float, window_batches: int) -> tuple[float, int]:
    """(best window loss, batches since it) after one more window of `window_batches` batches whose
    mean loss is `window_loss`."""
    if window_loss < best - IMPROVEMENT:
        return window_loss, 0
    return best, since_best + window_batches


def patience_verdict(best: float, since_best: int, patience: int) -> str | None:
    """Why the run must stop for lack of progress, or None (patience 0: never)."""
    if patience and since_best >= patience:
        return f"the training loss has not improved on {best:.4f} for {since_best:,} batches (train.patience_batches)"
    return None


def change_acc_verdict(val: dict, epochs_done: int, threshold: float | None, key: str = "val_metric/action_change_acc") -> str | None:
    """Why the run must stop after its first epoch for a low validation change_acc, or None."""
    change_acc = val.get(key, math.nan)
    if threshold is not None and epochs_done == 1 and not change_acc >= threshold:
        return f"{key} {change_acc:.3f} is under {threshold} after the first epoch (train.min_val_change_acc)"
    return None
