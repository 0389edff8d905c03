"""Rollout error against horizon, for models and baselines side by side.

`mean_curves` scores predicted frames (a rollout's, or a baseline's) against the replay's true frames,
frame by frame, and `at_horizons` reads the curves off at horizons (the h-th predicted frame,
t0+h-1); `horizon_errors` does both. Metrics, each averaged over rollouts (and players where it says
"both"):
    pos_error        mean |pred - true| of x and y, both players (game units; the rollout's pos_error)
    pos_error_euclid     Euclidean distance of (x, y), mean of both players (game units; the reference's)
    pos_error_euclid_p0  the same, p0 only; pos_error_euclid_p1 for p1
    action_match     fraction of players whose action id is the true one
    on_ground_match  fraction of players whose on_ground flag is the true one
    facing_match     fraction of players whose facing flag is the true one
    stocks_match     fraction of players whose stock count is the true one
    damage_error     mean |pred - true| of percent, both players (percent)
`comparison_table` prints one row per (horizon, metric) with a column per predictor.

Shape letters: N rollouts, H horizon, F n_float, I n_int.
"""

from __future__ import annotations

import numpy as np

from melee_encode import Schema
from melee_model.layout import FrameLayout

HORIZONS = (1, 10, 60, 300)
HORIZON_METRICS = (
    "pos_error",
    "pos_error_euclid",
    "pos_error_euclid_p0",
    "pos_error_euclid_p1",
    "action_match",
    "on_ground_match",
    "facing_match",
    "stocks_match",
    "damage_error",
)
# Where a lower value is better (errors); the others are match fractions, higher is better.
LOWER_IS_BETTER = {"pos_error", "pos_error_euclid", "pos_error_euclid_p0", "pos_error_euclid_p1", "damage_error"}


def player_values(schema: Schema, floats: np.ndarray, field: str) -> np.ndarray:
    """Both players' values of a float field in game units: (..., F) -> (..., 2)."""
    names = [f"p{p}.{field}" for p in (0, 1)]
    return np.stack([schema.decode_float(floats[..., schema.float_index(n)], n) for n in names], axis=-1)


def per_frame(
    layout: FrameLayout, pred_floats: np.ndarray, pred_ints: np.ndarray, true_floats: np.ndarray, true_ints: np.ndarray
) -> dict[str, np.ndarray]:
    """Each of HORIZON_METRICS per rollout and frame, (N, H), from (N, H, F) floats and (N, H, I) ints."""
    schema = layout.schema
    decoded = lambda floats, field: player_values(schema, floats, field)  # noqa: E731  (N, H, 2), game units
    dx = decoded(pred_floats, "x") - decoded(true_floats, "x")  # (N, H, 2)
    dy = decoded(pred_floats, "y") - decoded(true_floats, "y")
    euclid = np.sqrt(dx**2 + dy**2)  # (N, H, 2)
    flag = lambda floats, field: decoded(floats, field) > 0.5  # noqa: E731
    same = lambda field: (flag(pred_floats, field) == flag(true_floats, field)).mean(-1)  # noqa: E731
    actions = list(layout.action_columns)
    stocks = np.rint(decoded(pred_floats, "stocks")) == np.rint(decoded(true_floats, "stocks"))  # (N, H, 2)
    return {
        "pos_error": np.concatenate([np.abs(dx), np.abs(dy)], axis=-1).mean(-1),
        "pos_error_euclid": euclid.mean(-1),
        "pos_error_euclid_p0": euclid[..., 0],
        "pos_error_euclid_p1": euclid[..., 1],
        "action_match": (pred_ints[..., actions] == true_ints[..., actions]).mean(-1),
        "on_ground_match": same("on_ground"),
        "facing_match": same("facing"),
        "stocks_match": stocks.mean(-1),
        "damage_error": np.abs(decoded(pred_floats, "percent") - decoded(true_floats, "percent")).mean(-1),
    }


def report_at(horizon: int, horizons=HORIZONS) -> list[int]:
    """The horizons that fit a rollout of `horizon` frames, and `horizon` itself."""
    return sorted({h for h in horizons if 1 <= h <= horizon} | {horizon})


def mean_curves(
    layout: FrameLayout, pred_floats: np.ndarray, pred_ints: np.ndarray, true_floats: np.ndarray, true_ints: np.ndarray
) -> dict[str, np.ndarray]:
    """Each of HORIZON_METRICS per predicted frame, averaged over the rollouts: metric -> (H,)."""
    return curves_of(per_frame(layout, pred_floats, pred_ints, true_floats, true_ints))


def curves_of(per_rollout: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-rollout values (N, H) averaged over the rollouts: metric -> (H,)."""
    return {name: values.mean(axis=0) for name, values in per_rollout.items()}


def at_horizons(curves: dict[str, np.ndarray], horizons=HORIZONS) -> dict[int, dict[str, float]]:
    """{h: {metric: the curve's value at the h-th predicted frame}} for the horizons that fit."""
    length = len(next(iter(curves.values())))
    return {h: {name: float(curves[name][h - 1]) for name in HORIZON_METRICS} for h in report_at(length, horizons)}


def horizon_errors(
    layout: FrameLayout, pred_floats: np.ndarray, pred_ints: np.ndarray, true_floats: np.ndarray, true_ints: np.ndarray, horizons=HORIZONS
) -> dict[int, dict[str, float]]:
    """{h: {metric: mean over rollouts at the h-th predicted frame}} for the horizons that fit."""
    return at_horizons(mean_curves(layout, pred_floats, pred_ints, true_floats, true_ints), horizons)


def comparison_table(errors: dict[str, dict[int, dict[str, float]]]) -> str:
    """Plain text: one row per (horizon, metric), one column per predictor (errors: predictor -> horizon_errors).
    A star marks the best predictor of each row."""
    names = list(errors)
    horizons = list(next(iter(errors.values())))
    width = max(14, *(len(n) + 2 for n in names))
    lines = [f"{'horizon':>7}  {'metric':<16}" + "".join(f"{n:>{width}}" for n in names)]
    for h in horizons:
        for metric in HORIZON_METRICS:
            values = [errors[n][h][metric] for n in names]
            best = (min if metric in LOWER_IS_BETTER else max)(values)
            cells = "".join(f"{f'{v:.4f}' + ('*' if v == best else ' '):>{width}}" for v in values)
            lines.append(f"{h:>7}  {metric:<16}{cells}")
    return "\n".join(lines)
