"""Rollout baselines: what a world model must beat on the very same rollouts.

Each baseline predicts frames t0 .. t0+H-1 from the same windows of real frames a rollout gets
(`rollout.store_windows`: frames t0-K .. t0+H-1, of which only the first K are read), in the
rollout's output format, so `melee_model.horizons` scores models and baselines alike:
- "copy_last": nothing changes; every predicted frame is the last real frame t0-1.
- "constant_velocity": the last real frame, with each player's x and y moved on by their last real
  step (frame t0-1 minus frame t0-2) once per frame, then clamped to the game's ranges as a rollout
  clamps its own frames. Everything else (action, damage, stocks, ...) is copied as in copy_last.

Shape letters: N rollouts, K context frames, H horizon, F n_float, I n_int.
"""

from __future__ import annotations

import numpy as np

from melee_encode.errors import ConfigError
from melee_model.layout import FrameLayout
from melee_model.stepper import CLAMP_RANGES

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
        schema = layout.schema
        columns = list(layout.moving_columns)
        step = float_windows[:, K - 1, columns] - float_windows[:, K - 2, columns]  # (N, 4), encoded units
        moved = floats[..., columns] + step[:, None] * np.arange(1, horizon + 1, dtype=np.float32)[None, :, None]  # (N, H, 4)
        # Encoded values are affine in game units, so the range is clamped in encoded units.
        for k, i in enumerate(columns):
            column = schema.float_columns[i]
            low, high = sorted(bound * column.scale + column.offset for bound in CLAMP_RANGES[column.field])
            moved[..., k] = np.clip(moved[..., k], low, high)
        floats[..., columns] = moved
    return floats, ints
