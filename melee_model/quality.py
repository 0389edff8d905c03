"""How good a model is on validation games, whichever objective trained it (issue 12's evaluation).

- `teacher_forced`: the trainer's metrics ("val_" keys) over a split, with a config's objective: the
  card's K-frame examples (`card_config`: K = data.context_len, 10 as published) for any model, and
  for a model trained with the sequence objective the same metrics over every target position of its
  own seq_len windows.
- `rollouts_with_baselines`: autoregressive rollouts from given start points, and the baselines
  (`melee_model.baselines`) on the very same windows, scored frame by frame (`melee_model.horizons`;
  `at_horizons` reads the curves off at horizons).
  `baseline_errors` gives the baselines' per rollout (`baseline_rollouts`: with their frames).
- `paired_ratio`: how two predictors' errors on the same rollouts compare, with an interval that
  says whether the rollouts were enough to tell.
- `median_errors` and `motion_ratios`: two figures a mean error cannot show. A predictor that moves
  the players less than the replays do (copy_last never moves them) lowers its mean position error
  on rollouts that go wrong while its typical rollout gets worse: the median error says how the
  typical rollout does, the motion ratio how far the players were moved.
- `errors_by_start`: the position error of the players who started below the main platform's
  level, on it or above it, and of those the replay keeps still: where a predictor's error comes from.
- `hedged_errors`: the position error of the best hedge of a predictor's rollouts (its players
  pulled back toward where they started, by a factor per start level and axis, fit on other games):
  how far moving the players less, and nothing else, could take it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from itertools import chain, islice

import numpy as np
import torch

from melee_encode import Store
from melee_model.baselines import BASELINES, baseline_frames
from melee_model.config import ExperimentConfig, UnrollConfig
from melee_model.examples import ExampleSource
from melee_model.horizons import curves_of, per_frame, player_values
from melee_model.layout import MOVING_FIELDS, FrameLayout
from melee_model.losses import float_scale
from melee_model.metrics import VAL_PREFIX, score
from melee_model.objective import build_objective
from melee_model.rollout import RolloutResult, pick_starts, rollout_windows, store_windows
from melee_model.sampler import SPLITS

MODEL = "model"  # the model's column among the baselines'


def card_config(config: ExperimentConfig) -> ExperimentConfig:
    """`config` with the run card's objective ("last", K = data.context_len frames per example); a
    sequence config's batches keep their number of targets (batch_size x seq_len examples); no unroll."""
    data = config.data
    batch_size = data.batch_size * data.seq_len if data.objective == "sequence" else data.batch_size
    sampling = dataclasses.replace(config.train.scheduled_sampling, mode="noise")
    return dataclasses.replace(
        config,
        data=dataclasses.replace(data, objective="last", batch_size=batch_size),
        train=dataclasses.replace(config.train, scheduled_sampling=sampling, unroll=UnrollConfig()),
    )


def autocast_for(device: torch.device, mixed_precision: str):
    """The trainer's precision on GPUs ("auto" is bf16 there); fp32 on a CPU."""
    dtypes = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}
    if device.type != "cuda" or mixed_precision not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtypes[mixed_precision])


def teacher_forced(
    model: torch.nn.Module,
    source: ExampleSource,
    config: ExperimentConfig,
    split: str,
    device,
    max_batches: int | None = None,
    num_workers: int | None = None,
    trained_scale: list[float] | None = None,
) -> tuple[dict[str, float], int]:
    """(the trainer's metrics of `split`, "val_" keys; targets seen) with config's objective, over at
    most `max_batches` batches of `source` (opened with that objective). split "all": train and val.

    trained_scale: the float errors' divisors the model trained with (a checkpoint's "float_scale",
    loss.float_weighting "target_std"), so that the loss reads as in training whatever store this
    is; None measures them on `source`'s train split."""
    device = torch.device(device)
    objective = build_objective(config, source.layout, device)
    batches = chain.from_iterable(source.loader(s, 0, num_workers=num_workers) for s in (SPLITS if split == "all" else (split,)))
    autocast = lambda: autocast_for(device, config.train.mixed_precision)  # noqa: E731
    scale = float_scale(source.layout, config.loss, source.float_target_std, device, trained_scale)
    metrics, targets = score(model, islice(batches, max_batches), source.layout, config.loss, device, autocast, objective, scale)
    return metrics.compute(prefix=VAL_PREFIX), targets


def rollout_starts(source: ExampleSource, split: str, count: int, horizon: int, seed: int = 0) -> np.ndarray:
    """`count` (game row, t0) start points spread over the split's games (rollout.pick_starts)."""
    return pick_starts(source.store.games, source.rows_of(split), count, horizon, source.layout.context_len, seed)


def rollouts_with_baselines(
    model: torch.nn.Module,
    layout: FrameLayout,
    store: Store,
    starts: np.ndarray,
    horizon: int,
    device,
    stepping: str | None = None,
    own: str = "all",
) -> tuple[RolloutResult, dict]:
    """The model's rollouts of `horizon` frames from `starts` (`stepping`, `own`: rollout_windows'), and
    {predictor: {metric: (H,) curve}} (the mean over rollouts) for the model (key MODEL) and every
    baseline, all on the same real windows."""
    float_windows, int_windows = store_windows(store, starts, layout.context_len, horizon)  # (N, K+H, F), (N, K+H, I)
    result = rollout_windows(model, layout, float_windows, int_windows, starts, device, stepping=stepping, own=own)
    curves = {MODEL: result.curves}
    for name, errors in baseline_errors(layout, float_windows, int_windows).items():
        curves[name] = curves_of(errors)
    return result, curves


def baseline_errors(layout: FrameLayout, float_windows: np.ndarray, int_windows: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """{baseline: {metric: (N, H) each rollout's value}} on real windows (N, K+H, F) and (N, K+H, I)
    whose first K frames are the context (horizons.per_frame's metrics)."""
    return {name: errors for name, (_, errors) in baseline_rollouts(layout, float_windows, int_windows).items()}


def baseline_rollouts(layout: FrameLayout, float_windows: np.ndarray, int_windows: np.ndarray) -> dict[str, tuple[np.ndarray, dict]]:
    """{baseline: (its predicted floats (N, H, F), {metric: (N, H)} as baseline_errors)}, each
    baseline's frames made once, for figures that read the frames as well as the errors."""
    K = layout.context_len
    true_floats, true_ints = float_windows[:, K:], int_windows[:, K:]  # (N, H, F), (N, H, I)
    runs = {}
    for name in BASELINES:
        pred_floats, pred_ints = baseline_frames(name, layout, float_windows, int_windows)  # (N, H, F), (N, H, I)
        runs[name] = pred_floats, per_frame(layout, pred_floats, pred_ints, true_floats, true_ints)
    return runs


def median_errors(pos_error: np.ndarray, horizons) -> dict[str, float]:
    """{"rollout_pos_error_median_<h>": the median over rollouts of pos_error (N, H) at the h-th frame}."""
    return {f"rollout_pos_error_median_{h}": float(np.median(pos_error[:, h - 1])) for h in horizons}


def motion_ratios(layout: FrameLayout, float_windows: np.ndarray, pred_floats: np.ndarray, horizons) -> dict[str, float]:
    """{"rollout_motion_ratio_<h>": how far a predictor moved the players from the last real frame by
    the h-th predicted frame, over how far the replay moved them}: mean |pred - start| over mean
    |true - start| of x and y, both players, game units. 1: as far as the replays; copy_last: 0.
    float_windows (N, K+H, F): the real windows, first K frames the context; pred_floats (N, H, F)."""
    K = layout.context_len
    real = positions(layout, float_windows)  # (N, K+H, 4)
    start = real[:, K - 1 : K]  # (N, 1, 4)
    moved, true = np.abs(positions(layout, pred_floats) - start), np.abs(real[:, K:] - start)  # (N, H, 4) each
    return {f"rollout_motion_ratio_{h}": float(moved[:, h - 1].mean() / max(true[:, h - 1].mean(), 1e-9)) for h in horizons}


def positions(layout: FrameLayout, floats: np.ndarray) -> np.ndarray:
    """Both players' x, then both players' y, in game units: (..., F) -> (..., 4) = p0.x, p1.x, p0.y, p1.y."""
    return np.concatenate([player_values(layout.schema, floats, f) for f in MOVING_FIELDS], axis=-1)


# Where a player is at a rollout's last real frame, by its y in game units (the main platform's top
# is y = 0). y, not the on_ground flag: replays before Slippi 2.0 have no flag.
START_LEVELS = {"below": (-np.inf, 0.0), "level": (0.0, 1.0), "above": (1.0, np.inf)}
STILL_UNITS = 5.0  # a player the replay moves less than this far (game units) by a frame counts as still


def player_groups(real: np.ndarray, K: int, horizon: int) -> dict[str, np.ndarray]:
    """{group: (N, 2) bool, players of each rollout in it}: START_LEVELS by the player's y at the last
    real frame (below: off stage recovering or on a ledge; level: on the main platform or just over
    it; above: in the air or on a platform), and "still", the players the replay keeps within
    STILL_UNITS of where they started by its `horizon`-th frame. real (N, K+H, 4): `positions` of
    the real windows, first K frames the context; H >= horizon."""
    start_y = real[:, K - 1, 2:]  # (N, 2)
    groups = {name: (start_y >= low) & (start_y < high) for name, (low, high) in START_LEVELS.items()}
    step = real[:, K + horizon - 1] - real[:, K - 1]  # (N, 4)
    groups["still"] = np.hypot(step[:, :2], step[:, 2:]) < STILL_UNITS  # (N, 2)
    return groups


def errors_by_start(layout: FrameLayout, float_windows: np.ndarray, pred_floats: np.ndarray, horizons) -> dict[str, float]:
    """{"rollout_pos_error_<group>_<h>": the mean of (|x error| + |y error|) / 2 at the h-th predicted
    frame over the players of each `player_groups` group (NaN for an empty one)}; game units. Over
    all players this mean is the rollout's pos_error. float_windows (N, K+H, F), pred_floats (N, H, F)."""
    K = layout.context_len
    real = positions(layout, float_windows)  # (N, K+H, 4), decoded once for every horizon
    off = np.abs(positions(layout, pred_floats) - real[:, K:])  # (N, H, 4)
    error = (off[..., :2] + off[..., 2:]) / 2  # (N, H, 2)
    figures = {}
    for h in horizons:
        for group, players in player_groups(real, K, h).items():
            figures[f"rollout_pos_error_{group}_{h}"] = float(error[:, h - 1][players].mean()) if players.any() else float("nan")
    return figures


HEDGE_FACTORS = np.linspace(0.0, 1.5, 31)  # a hedge's choices: 0 (copy_last) to 1.5x the predictor's move, by 0.05
BY_CLOSENESS_TO_1 = np.argsort(np.abs(HEDGE_FACTORS - 1.0), kind="stable")  # of equal fits, the least hedge wins


def hedged_errors(layout: FrameLayout, float_windows: np.ndarray, pred_floats: np.ndarray, games: np.ndarray, horizons) -> dict[str, float]:
    """{"rollout_pos_error_hedged_<h>": the pos_error at the h-th predicted frame once every predicted
    x and y is pulled toward the last real frame, start + a (pred - start), with a factor a from
    HEDGE_FACTORS per START_LEVELS group and axis, fit on the rollouts of the games of one parity and
    read on the other's, both ways (NaN if every rollout is of one parity; of factors that fit
    equally, as for a group with no rollout or no move to fit on, the one closest to 1)}; game units.

    What hedging alone could give this predictor, knowing where its players start and nothing
    else: its own pos_error is the hedge at a = 1, copy_last's at a = 0. float_windows (N, K+H, F)
    the real windows, pred_floats (N, H, F), games (N,) each rollout's game."""
    K = layout.context_len
    real = positions(layout, float_windows)  # (N, K+H, 4): p0.x, p1.x, p0.y, p1.y
    start = real[:, K - 1]  # (N, 4)
    level = np.digitize(start[:, 2:], [high for _, high in list(START_LEVELS.values())[:-1]])  # (N, 2): the START_LEVELS index
    group = np.concatenate([level, level + len(START_LEVELS)], axis=1)  # (N, 4): a group per start level and axis
    even = games % 2 == 0  # (N,)
    figures = {}
    for h in horizons:
        moved, missed = positions(layout, pred_floats[:, h - 1]) - start, start - real[:, K + h - 1]  # (N, 4) each
        errors = np.abs(missed + HEDGE_FACTORS[:, None, None] * moved)  # (A, N, 4)
        total = 0.0
        for fit, read in ((even, ~even), (~even, even)):
            for g in range(2 * len(START_LEVELS)):
                fit_cells, read_cells = fit[:, None] & (group == g), read[:, None] & (group == g)  # (N, 4) each
                fits = errors[:, fit_cells].sum(axis=1)  # (A,)
                best = BY_CLOSENESS_TO_1[np.argmin(fits[BY_CLOSENESS_TO_1])]
                total += errors[best][read_cells].sum()
        figures[f"rollout_pos_error_hedged_{h}"] = float(total / start.size) if even.any() and (~even).any() else float("nan")
    return figures


def paired_ratio(
    base: np.ndarray, other: np.ndarray, games: np.ndarray, level: float = 0.9, draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(other) / mean(base) for two predictors' errors on the same rollouts, (N,) each, and the
    central `level` interval of that ratio over a bootstrap that resamples whole games (`games` (N,):
    each rollout's game; rollouts of one game are not independent): (ratio, low, high)."""
    _, game_of = np.unique(games, return_inverse=True)  # (N,) game index of each rollout
    base_sums = np.bincount(game_of, weights=base)  # (G,)
    other_sums = np.bincount(game_of, weights=other)  # (G,)
    picks = np.random.default_rng(seed).integers(0, len(base_sums), (draws, len(base_sums)))  # (draws, G)
    ratios = other_sums[picks].sum(axis=1) / base_sums[picks].sum(axis=1)  # (draws,)
    tail = (1 - level) / 2
    return float(other.sum() / base.sum()), float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))
