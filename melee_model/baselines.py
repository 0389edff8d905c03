"""Rollout baselines: what a world model must beat on the very same rollouts.

Each baseline predicts frames t0 .. t0+H-1 from the same windows of real frames a rollout gets
(`rollout.store_windows`: frames t0-K .. t0+H-1, of which only the first K are read), in the
rollout's output format, so `melee_model.horizons` scores models and baselines alike:
- "copy_last": nothing changes; every predicted frame is the last real frame t0-1.
- "constant_velocity": the last real frame, with each player's x and y moved on by their last real
  step (frame t0-1 minus frame t0-2) once per frame, each frame settled as a rollout settles its own
  (clamped to the game's ranges, and with model.stage_floor landed on the main platform).
  Everything else (action, damage, stocks, ...) is copied as in copy_last.

Shape letters: N rollouts, K context frames, H horizon, F n_float, I n_int.
"""

from __future__ import annotations

import numpy as np
import torch

from melee_encode.errors import ConfigError
from melee_model.layout import FrameLayout
from melee_model.stepper import FrameStepper

BASELINES = ("copy_last", "constant_velocity")


def baseline_frames(name: str, layout: FrameLayout, float_windows: np.ndarray, int_windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Baseline `name`'s predicted frames from windows (N, K+H, F) float32 and (N, K+H, I) int16:
    (N, H, F) float32 and (N, H, I) int16."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; options: {', '.join(BASELINES)}")
    K = layout.context_len
    horizon = float_windows.shape[1] - K
    floats = np.repeat(float_windows[:, K - 1 : K], horizon, axis=1)  # (N, H, F)
    ints = np.repeat(int_windows[:, K - 1 : K], horizon, axis=1)  # (N, H, I)
    if name == "constant_velocity":
        if K < 2:
            raise ConfigError("the constant-velocity baseline needs at least 2 context frames")
        floats = constant_velocity(layout, float_windows[:, K - 2 : K], int_windows[:, K - 1], horizon)
    return floats, ints


def constant_velocity(layout: FrameLayout, last_two: np.ndarray, last_int: np.ndarray, horizon: int) -> np.ndarray:
    """The last real frame moved on by its step once per frame, each frame settled by the rollout's rule
    (FrameStepper.settle: clamped, and landed with model.stage_floor): last_two (N, 2, F) frames t0-2
    and t0-1, last_int (N, I) -> (N, H, F) float32."""
    stepper, columns = FrameStepper(layout, "cpu"), list(layout.moving_columns)
    frame, last_int = torch.from_numpy(last_two[:, 1]), torch.from_numpy(last_int.astype(np.int64))  # (N, F), (N, I)
    step = frame[:, columns] - torch.from_numpy(last_two[:, 0, columns])  # (N, 4), encoded units
    frames = []
    for _ in range(horizon):
        moved = frame.clone()
        moved[:, columns] += step
        frame = stepper.settle(frame, moved, last_int)  # (N, F)
        frames.append(frame)
    return torch.stack(frames, 1).numpy()  # (N, H, F)
