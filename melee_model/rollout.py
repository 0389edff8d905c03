"""Autoregressive rollouts (spec section 5): the model's predictions fed back as its next context frame.

A rollout starts from K real frames (t0-K .. t0-1 of a game) and predicts frames t0 .. t0+H-1 one at a
time, each from the frames before it (real at first, then its own predictions) and the replay's own
controller input at that frame; `stepper.FrameStepper` turns each prediction into the next frame.
Many rollouts run at once, as one batch, on any device. Models with a lookahead (data.lookahead > 0)
predict a frame several steps on and cannot be rolled out.

Two ways to step the model (`stepping`):
- "recurrent" (the default for FrameStackMamba2): the real context is run once (`prefill`), then each
  predicted frame is one `step` of the carried layer states, so a rollout of H frames costs H
  single-frame steps whatever the context length; frame t0+h is predicted from every frame before it,
  told that h of them are its own (model.rollout_age).
- "window" (the run card's, and FrameStackMLP's only way): each frame is predicted by a full forward
  over the K frames before it, so the model never sees more than its K-frame training context (and,
  like every full forward, reads its own frames as real ones).

What a rollout reads back as its own frame (`own`): "all" (the default, and every figure's unless
said) the frame the stepper made from the prediction; "floats" the made floats with the replay's
ints (actions, jumps, ...), so only the float columns drift; "positions" the replay's frame with the
players' x and y made (layout.moving_columns), so only positions drift. The last two are
diagnostics: they say how much of a rollout's drift the other columns' mistakes cause, and their
frames match the replay in every column they take from it.

`rollout` runs start points in one game's frames; `rollout_store` runs start points anywhere in a
store; `pick_starts` chooses start points over a split's games, deterministically for a seed. Both
return a `RolloutResult`: per-frame errors averaged over the rollouts, read off at horizons, and the
first rollout's trajectory in game units for plotting.

Shape letters: N rollouts, K context frames, H horizon, F n_float, I n_int, C ctrl_dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from melee_encode import Store
from melee_encode.errors import ConfigError
from melee_model.horizons import HORIZONS, at_horizons, curves_of, per_frame, player_values
from melee_model.layout import FrameLayout
from melee_model.stepper import FrameStepper

STEPPINGS = ("recurrent", "window")
OWN_FRAMES = ("all", "floats", "positions")  # what a rollout reads back (module docstring)
# Per-player fields of a trajectory, in game units (action: ids).
TRAJECTORY_FIELDS = ("x", "y", "percent", "stocks", "action")


@dataclass
class Trajectory:
    """One rollout in game units: field -> (H, 2) arrays (player axis last), predicted and true."""

    start: tuple[int, int]  # (game, t0)
    pred: dict[str, np.ndarray]
    true: dict[str, np.ndarray]


@dataclass
class RolloutResult:
    """What a batch of rollouts produced.

    metrics[h][name] is the mean over rollouts of horizons.HORIZON_METRICS name at the h-th predicted
    frame (frame t0+h-1); curves[name] (H,) holds that mean for every frame, and per_rollout[name]
    (N, H) each rollout's value (for paired comparisons of two predictors on the same rollouts).
    """

    starts: np.ndarray  # (N, 2) int64: (game, t0) of each rollout
    metrics: dict[int, dict[str, float]]
    curves: dict[str, np.ndarray]
    per_rollout: dict[str, np.ndarray]
    pred_floats: np.ndarray  # (N, H, F) the predicted frames t0 .. t0+H-1
    pred_ints: np.ndarray  # (N, H, I)
    first: Trajectory


def pick_starts(games, rows: np.ndarray, count: int, horizon: int, context_len: int, seed: int = 0) -> np.ndarray:
    """`count` start points (game row, t0) spread over the games `rows` of a store's games table
    (anything with "length" and "hash" columns) that are long enough for a rollout.

    Games take turns in a seeded order (so up to `count` different games are used) and each start
    t0 is uniform in [K, length - H]. The draw goes over the games in content-hash order, so the
    same games give the same (game, t0) pairs at whatever rows a store holds them: an encode with
    more workers stores games in another order. Sorted by (row, t0), so that reads group by game.
    Returns (count, 2) int64.
    """
    rows = np.asarray(rows, dtype=np.int64)
    lengths = np.asarray(games["length"])
    eligible = rows[lengths[rows] >= context_len + horizon]
    if not len(eligible):
        raise ConfigError(f"no game is long enough for a rollout of {horizon} frames after {context_len} context frames")
    hashes = games["hash"]
    eligible = np.array(sorted(eligible, key=lambda row: str(hashes[row])), dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(eligible)[np.arange(count) % len(eligible)]  # (count,)
    t0 = rng.integers(context_len, lengths[chosen] - horizon + 1)  # (count,)
    starts = np.stack([chosen, t0], axis=1).astype(np.int64)  # (count, 2)
    return starts[np.lexsort((starts[:, 1], starts[:, 0]))]


def rollout(
    model: torch.nn.Module,
    layout: FrameLayout,
    floats: np.ndarray,
    ints: np.ndarray,
    starts,
    horizon: int,
    device,
    horizons=None,
    batch_size: int = 1024,
    stepping: str | None = None,
) -> RolloutResult:
    """Rollouts from frames `starts` (t0 values) of one game; floats (frames, F), ints (frames, I).

    Each needs K <= t0 and t0 + horizon <= frames. The model must be on `device`. The result's
    starts have game 0.
    """
    starts = np.asarray(starts, dtype=np.int64)
    K = layout.context_len
    if len(starts) and (starts.min() < K or starts.max() + horizon > len(floats)):
        raise ConfigError(f"rollout starts must lie in [{K}, {len(floats) - horizon}] for {horizon} frames of a {len(floats)}-frame game")
    frames = starts[:, None] + np.arange(-K, horizon)  # (N, K+H)
    return rollout_windows(
        model,
        layout,
        floats[frames],
        ints[frames],
        np.stack([np.zeros_like(starts), starts], axis=1),
        device,
        horizons,
        batch_size,
        stepping,
    )


def rollout_store(
    model: torch.nn.Module,
    layout: FrameLayout,
    store: Store,
    starts: np.ndarray,
    horizon: int,
    device,
    horizons=None,
    batch_size: int = 1024,
    stepping: str | None = None,
) -> RolloutResult:
    """Rollouts from (game row, t0) start points anywhere in a store (e.g. from `pick_starts`)."""
    float_windows, int_windows = store_windows(store, starts, layout.context_len, horizon)
    return rollout_windows(model, layout, float_windows, int_windows, starts, device, horizons, batch_size, stepping)


def store_windows(store: Store, starts: np.ndarray, context_len: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames t0-K .. t0+H-1 of each start: (N, K+H, F) float32 and (N, K+H, I) int16, one read per game."""
    floats, ints = [None] * len(starts), [None] * len(starts)
    for game in np.unique(starts[:, 0]):
        mine = np.flatnonzero(starts[:, 0] == game)
        first, stop = int(starts[mine, 1].min()) - context_len, int(starts[mine, 1].max()) + horizon
        game_floats, game_ints, _ = store.read_frames(int(game), first, stop)  # (stop - first, F), (stop - first, I)
        if len(game_floats) < stop - first or first < 0:
            raise ConfigError(f"game {game} has no frames {first} .. {stop - 1} for a rollout")
        for i in mine:
            at = int(starts[i, 1]) - context_len - first
            floats[i], ints[i] = game_floats[at : at + context_len + horizon], game_ints[at : at + context_len + horizon]
    return np.stack(floats), np.stack(ints)  # (N, K+H, F), (N, K+H, I)


def rollout_windows(
    model: torch.nn.Module,
    layout: FrameLayout,
    float_windows: np.ndarray,
    int_windows: np.ndarray,
    starts: np.ndarray,
    device,
    horizons=None,
    batch_size: int = 1024,
    stepping: str | None = None,
    own: str = "all",
) -> RolloutResult:
    """Rollouts over windows of real frames t0-K .. t0+H-1: (N, K+H, F) floats, (N, K+H, I) ints.

    The first K frames are the starting context; of the other H, only the controller columns are
    read to predict (the rest is the truth the metrics compare with; with `own` other than "all",
    OWN_FRAMES, also what the rollout reads back). Runs in eval mode without gradients,
    `batch_size` rollouts at a time, and restores the model's mode afterwards. `stepping`: one of
    STEPPINGS (module docstring); None picks "recurrent" for a model that has a step.
    """
    K = layout.context_len
    horizon = float_windows.shape[1] - K
    if horizon < 1 or len(float_windows) < 1:
        raise ConfigError(f"a rollout needs at least one start and one frame past the {K} context frames")
    if own not in OWN_FRAMES:
        raise ConfigError(f"a rollout's own frames must be one of {', '.join(OWN_FRAMES)}, got {own!r}")
    roll = _stepped_roll(model, stepping)
    device = torch.device(device)
    stepper = FrameStepper(layout, device)
    was_training = model.training
    model.eval()
    try:
        pieces = [
            roll(model, stepper, float_windows[a : a + batch_size], int_windows[a : a + batch_size], device, own)
            for a in range(0, len(float_windows), batch_size)
        ]
    finally:
        model.train(was_training)
    pred_floats = np.concatenate([p[0] for p in pieces])  # (N, H, F)
    pred_ints = np.concatenate([p[1] for p in pieces])  # (N, H, I)
    true_floats, true_ints = float_windows[:, K:], int_windows[:, K:]  # (N, H, F), (N, H, I)
    per_rollout = per_frame(layout, pred_floats, pred_ints, true_floats, true_ints)  # name -> (N, H)
    curves = curves_of(per_rollout)  # name -> (H,)
    metrics = at_horizons(curves, HORIZONS if horizons is None else horizons)
    first = Trajectory(
        start=(int(starts[0][0]), int(starts[0][1])),
        pred=game_units(layout, pred_floats[0], pred_ints[0]),
        true=game_units(layout, true_floats[0], true_ints[0]),
    )
    return RolloutResult(np.asarray(starts, dtype=np.int64), metrics, curves, per_rollout, pred_floats, pred_ints, first)


def _stepped_roll(model: torch.nn.Module, stepping: str | None):
    """The rollout loop for `stepping` (None: recurrent when the model has a step)."""
    recurrent = hasattr(model, "step")
    stepping = stepping or ("recurrent" if recurrent else "window")
    if stepping not in STEPPINGS:
        raise ConfigError(f"rollout stepping must be one of {', '.join(STEPPINGS)}, got {stepping!r}")
    if stepping == "recurrent" and not recurrent:
        raise ConfigError(f"{type(model).__name__} has no recurrent step: roll it out with stepping 'window'")
    return _roll_recurrent if stepping == "recurrent" else _roll_window


@torch.no_grad()
def _roll_recurrent(
    model: torch.nn.Module, stepper: FrameStepper, float_windows: np.ndarray, int_windows: np.ndarray, device: torch.device, own: str
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted frames (n, H, F) float32 and (n, H, I) int16 of one batch of windows, one model step per frame."""
    K = stepper.layout.context_len
    windows = torch.as_tensor(float_windows, dtype=torch.float32, device=device)  # (n, K+H, F)
    int_windows = torch.as_tensor(int_windows, device=device).long()  # (n, K+H, I)
    x, state = model.prefill(windows[:, :K], int_windows[:, :K])  # (n, D), FrameStackState
    last_float, last_int = windows[:, K - 1], int_windows[:, K - 1]  # (n, F), (n, I)
    floats, ints = [], []
    for h in range(windows.shape[1] - K):
        replay = windows[:, K + h]  # (n, F): the replay's frame t0+h, for its controls
        pred = model.predict(x, stepper.next_ctrl(last_float, replay), state.step, age=h)  # h own frames read
        made = stepper.frame(last_float, last_int, pred, replay)  # (n, F), (n, I)
        last_float, last_int = read_back(stepper.layout, own, *made, replay, int_windows[:, K + h])
        floats.append(last_float)
        ints.append(last_int)
        if h + 1 < windows.shape[1] - K:
            x, state = model.step(last_float, last_int, state)  # (n, D)
    return torch.stack(floats, 1).cpu().numpy(), torch.stack(ints, 1).to(torch.int16).cpu().numpy()  # (n, H, F), (n, H, I)


@torch.no_grad()
def _roll_window(
    model: torch.nn.Module, stepper: FrameStepper, float_windows: np.ndarray, int_windows: np.ndarray, device: torch.device, own: str
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted frames (n, H, F) float32 and (n, H, I) int16 of one batch of windows, a K-frame forward per frame."""
    K = stepper.layout.context_len
    windows = torch.as_tensor(float_windows, dtype=torch.float32, device=device)  # (n, K+H, F)
    int_windows = torch.as_tensor(int_windows, device=device).long()  # (n, K+H, I)
    ctx_float, ctx_int = windows[:, :K].clone(), int_windows[:, :K]  # (n, K, F), (n, K, I)
    floats, ints = [], []
    for h in range(windows.shape[1] - K):
        replay = windows[:, K + h]  # (n, F): the replay's frame t0+h, for its controls
        pred = model(ctx_float, ctx_int, stepper.next_ctrl(ctx_float[:, -1], replay))
        made = stepper.frame(ctx_float[:, -1], ctx_int[:, -1], pred, replay)  # (n, F), (n, I)
        frame_float, frame_int = read_back(stepper.layout, own, *made, replay, int_windows[:, K + h])
        floats.append(frame_float)
        ints.append(frame_int)
        ctx_float = torch.cat([ctx_float[:, 1:], frame_float[:, None]], dim=1)  # (n, K, F)
        ctx_int = torch.cat([ctx_int[:, 1:], frame_int[:, None]], dim=1)  # (n, K, I)
    return torch.stack(floats, 1).cpu().numpy(), torch.stack(ints, 1).to(torch.int16).cpu().numpy()  # (n, H, F), (n, H, I)


def read_back(
    layout: FrameLayout, own: str, made_float: torch.Tensor, made_int: torch.Tensor, replay_float: torch.Tensor, replay_int: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame a rollout reads back, (n, F) and (n, I), for `own` (OWN_FRAMES): the stepper's made
    frame, or parts of it put into the replay's frame at the same time."""
    if own == "all":
        return made_float, made_int
    if own == "floats":
        return made_float, replay_int
    moving = list(layout.moving_columns)
    floats = replay_float.clone()  # (n, F)
    floats[:, moving] = made_float[:, moving]
    return floats, replay_int


def game_units(layout: FrameLayout, floats: np.ndarray, ints: np.ndarray) -> dict[str, np.ndarray]:
    """TRAJECTORY_FIELDS of (H, F) floats and (H, I) ints: field -> (H, 2), floats decoded to game units."""
    out = {field: player_values(layout.schema, floats, field) for field in TRAJECTORY_FIELDS if field != "action"}
    out["action"] = ints[:, list(layout.action_columns)].astype(np.int64)  # (H, 2)
    return out
