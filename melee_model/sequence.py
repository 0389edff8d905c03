"""The sequence objective's examples, built on the device: every position of a window is a card example.

A sequence batch (the loader's contract) holds windows of L+1 consecutive frames s .. s+L of one game:
float_seq (B, L+1, F), int_seq (B, L+1, I) and target_mask (B, L). Position j reads frames s .. s+j
and the controls of frame s+j+1, and predicts frame s+j+1 exactly as the card's example with target
frame t = s+j+1 does (`melee_model.examples.build_batch`, the layout's docstring):
    float_in  (B, L, F)   frames s .. s+L-1          int_in (B, L, I)  the same frames
    float_next (B, L, F)  frames s+1 .. s+L (each position's target frame, whole)
    next_ctrl (B, L, C)   controls of frames s+1 .. s+L (with the button rising edges between frame
                          s+j and s+j+1 when press_events is on)
    float_tgt (B, L, T)   float target columns of frame s+j+1, minus frame s+j for the delta columns
    int_tgt   (B, L, 12)  int target columns of frame s+j+1
    hold      (B, L, 2)   1.0 where a player's x and y do not change from frame s+j to s+j+1
The model reads float_in, int_in and next_ctrl in one causal pass (FrameStackMamba2 with next_ctrl of
L positions). `position_rows` then lays positions out as rows of card examples, N = B * L, so the
card's losses and metrics apply unchanged, each row weighted by its target_mask entry.

Shape letters: B windows, L positions, F n_float, I n_int, C ctrl_dim, T float_target_dim, N = B * L.
"""

from __future__ import annotations

import torch

from melee_encode.errors import ConfigError
from melee_model.layout import FrameLayout
from melee_model.motion import hold_targets


class SequenceParts:
    """The layout's column indices as tensors on one device; calling it builds a batch's parts.

    __call__(batch) -> {"float_in", "int_in", "float_next", "next_ctrl", "float_tgt", "int_tgt", "hold", "target_mask"}
    with the shapes of the module docstring; int_in and int_tgt are int64, target_mask bool.
    """

    def __init__(self, layout: FrameLayout, device):
        if layout.lookahead:
            raise ConfigError(f"the sequence objective predicts the next frame: data.lookahead must be 0, not {layout.lookahead}")
        self.layout = layout
        index = lambda values: torch.tensor(list(values), dtype=torch.long, device=device)  # noqa: E731
        self.ctrl_columns, self.button_columns = index(layout.ctrl_columns), index(layout.button_columns)
        self.target_columns, self.int_target_columns = index(layout.float_target_columns), index(layout.int_target_columns)
        self.delta_positions, self.delta_columns = index(layout.delta_target_positions), index(layout.delta_target_columns)

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        float_seq, int_seq = batch["float_seq"], batch["int_seq"].long()  # (B, L+1, F), (B, L+1, I)
        before, after = float_seq[:, :-1], float_seq[:, 1:]  # (B, L, F): frames s+j and s+j+1
        float_tgt = self.float_targets(before, after)  # (B, L, T)
        return {
            "float_in": before,
            "int_in": int_seq[:, :-1],  # (B, L, I)
            "float_next": after,
            "next_ctrl": self.next_ctrl(before, after),  # (B, L, C)
            "float_tgt": float_tgt,
            "int_tgt": int_seq[:, 1:, self.int_target_columns],  # (B, L, 12)
            "hold": hold_targets(self.layout, float_tgt),  # (B, L, 2)
            "target_mask": batch["target_mask"].bool(),  # (B, L)
        }

    def next_ctrl(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Controls of frames `after` (..., F), with rising edges from `before` when press_events is on."""
        controls = after[..., self.ctrl_columns]  # (..., 26)
        if not self.layout.press_events:
            return controls
        pressed = (after[..., self.button_columns] > 0.5) & (before[..., self.button_columns] <= 0.5)  # (..., 16)
        return torch.cat([controls, pressed.float()], dim=-1)  # (..., 42)

    def float_targets(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """float_tgt of frames `after` (..., F) seen from frames `before` (..., F): (..., T)."""
        targets = after[..., self.target_columns]  # (..., T), a copy
        targets[..., self.delta_positions] -= before[..., self.delta_columns]
        return targets


def position_rows(pred: dict, parts: dict) -> tuple[dict, dict]:
    """Positions as rows of card examples: (pred rows, target rows), N = B * L rows each.

    pred: the model's dict with a position axis ("float" (B, L, T), field -> (B, L, 2, V)) ->
    "float" (N, T), field -> (N, 2, V). Target rows: float_tgt (N, T), int_tgt (N, 12), int_ctx
    (N, 1, I) (each position's last input frame, which is all of its context the metrics read), hold
    (N, 2), and weight (N,) float32, 1 where the position is a target, else 0.
    """
    rows = {
        "float_tgt": parts["float_tgt"].flatten(0, 1),  # (N, T)
        "int_tgt": parts["int_tgt"].flatten(0, 1),  # (N, 12)
        "hold": parts["hold"].flatten(0, 1),  # (N, 2)
        "int_ctx": parts["int_in"].flatten(0, 1)[:, None],  # (N, 1, I)
        "weight": parts["target_mask"].flatten().float(),  # (N,)
    }
    return {key: value.flatten(0, 1) for key, value in pred.items()}, rows
