"""Assembling batches from a decoded pool: the card's examples, or sequence windows.

The pool is what `reader.GroupReader` decoded for a group of pieces; an item's *anchor* is the pool
index of its position. Card objective (`build_batch`): per example, the K context frames, the
controls of the next frame(s) and the targets, gathered from a frame-major pool (layout.py defines
each part). Sequence objective (`window_batch`): per window, seq_len + 1 consecutive frames copied
from a feature-major pool as they are stored, and which of its positions are targets; the model side
builds each position's example on the device (`batch_to_device` puts the frames in frame order there,
where the transpose is free).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from melee_model.config import DataConfig
from melee_model.layout import FrameLayout
from melee_model.sampler import items_of

SEQUENCE_KEYS = ("float_seq", "int_seq")  # shipped feature-major: (B, columns, seq_len + 1)
INT_KEYS = ("int_ctx", "int_tgt", "int_seq")  # int16 from the loader, int64 on the device


class BatchAssembler:
    """Batches of a data config's objective from a pool: `assembler(floats, ints, anchors, positions,
    ends)` with anchors, positions (part positions) and game ends (B,) int64 -> a dict of arrays."""

    def __init__(self, layout: FrameLayout, config: DataConfig):
        self.layout, self.config = layout, config
        self.items = items_of(config)
        self.frame_major = config.objective == "last"

    def __call__(
        self, floats: np.ndarray, ints: np.ndarray, anchors: np.ndarray, positions: np.ndarray, ends: np.ndarray
    ) -> dict[str, np.ndarray]:
        if self.frame_major:
            return build_batch(floats, ints, anchors, self.layout)
        return window_batch(floats, ints, anchors, positions, ends, self.config.seq_len, self.config.warmup)


def build_batch(floats: np.ndarray, ints: np.ndarray, anchors: np.ndarray, layout: FrameLayout) -> dict[str, np.ndarray]:
    """Examples for the given anchors (pool index of each example's first control frame t).

    floats (P, n_float), ints (P, n_int), anchors (B,) -> float_ctx (B, K, n_float) float32,
    int_ctx (B, K, n_int) int16, next_ctrl (B, ctrl_dim) float32, float_tgt (B, T) float32,
    int_tgt (B, int_target_dim) int16. The layout's docstring defines each part.
    """
    K, d = layout.context_len, layout.lookahead
    rows = anchors[:, None] + np.arange(-K, 0)  # (B, K)
    # mode="clip": every index is valid, and "raise" would buffer the whole output once more.
    float_ctx = np.take(floats, rows.ravel(), axis=0, mode="clip").reshape(len(anchors), K, -1)  # (B, K, F)
    int_ctx = np.take(ints, rows.ravel(), axis=0, mode="clip").reshape(len(anchors), K, -1)  # (B, K, I)
    controls, frame = [], float_ctx[:, -1]  # (B, F): frame t-1
    for j in range(d + 1):
        before, frame = frame, np.take(floats, anchors + j, axis=0, mode="clip")  # (B, F): frames t+j-1, t+j
        controls.append(frame[:, layout.ctrl_columns])  # (B, 26)
        if layout.press_events:
            pressed = (frame[:, layout.button_columns] > 0.5) & (before[:, layout.button_columns] <= 0.5)  # (B, 16)
            controls.append(pressed.astype(np.float32))
    target = frame  # (B, F): frame t+d
    base = float_ctx[:, -1] if layout.lookahead_delta == "from_context" else before  # (B, F): frame t-1, or t+d-1
    float_tgt = target[:, layout.float_target_columns]  # (B, T)
    float_tgt[:, layout.delta_target_positions] -= base[:, layout.delta_target_columns]
    return {
        "float_ctx": float_ctx,
        "int_ctx": int_ctx,
        "next_ctrl": np.concatenate(controls, axis=1),  # (B, ctrl_dim)
        "float_tgt": float_tgt,
        "int_tgt": np.take(ints, anchors + d, axis=0, mode="clip")[:, layout.int_target_columns],  # (B, 12)
    }


def window_batch(
    floats: np.ndarray, ints: np.ndarray, anchors: np.ndarray, positions: np.ndarray, ends: np.ndarray, seq_len: int, warmup: int
) -> dict[str, np.ndarray]:
    """Windows of seq_len + 1 frames from feature-major blocks floats (blocks, n_float, C) and ints
    (blocks, n_int, C), a window being a run of flat positions (block * C + frame) from its anchor.

    -> float_seq (B, n_float, L+1) float32, int_seq (B, n_int, L+1) int16, and target_mask (B, L) bool:
    position j (predicting the window's frame j+1) is a target past the warm-up and inside its game.
    """
    L, C = seq_len, floats.shape[2]
    blocks, frames = np.divmod(anchors, C)
    # One gather for the whole batch (a loop of copies, each releasing and retaking the GIL, stalls
    # behind the thread that reads the next group); the few windows that run into the next block are
    # gathered short, then completed one by one.
    float_seq = sliding_window_view(floats, L + 1, axis=2)[blocks, :, np.minimum(frames, C - L - 1)]  # (B, F, L+1)
    int_seq = sliding_window_view(ints, L + 1, axis=2)[blocks, :, np.minimum(frames, C - L - 1)]  # (B, I, L+1)
    for i in np.flatnonzero(frames > C - L - 1).tolist():
        block, frame, k = blocks[i], frames[i], C - frames[i]  # k frames in this block, the rest in the next
        float_seq[i, :, :k], float_seq[i, :, k:] = floats[block, :, frame:], floats[block + 1, :, : L + 1 - k]
        int_seq[i, :, :k], int_seq[i, :, k:] = ints[block, :, frame:], ints[block + 1, :, : L + 1 - k]
    j = np.arange(L)
    target_mask = (j >= warmup) & (positions[:, None] + j + 1 < ends[:, None])  # (B, L)
    return {"float_seq": float_seq, "int_seq": int_seq, "target_mask": target_mask}


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """Move a loader batch to the device: int columns become int64, and sequence windows frame-major
    (B, L+1, columns), both done there (cheaply on a GPU) rather than in the loader."""
    moved = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if key in SEQUENCE_KEYS:
            value = value.transpose(1, 2)
        moved[key] = value.long() if key in INT_KEYS else value
    return moved
