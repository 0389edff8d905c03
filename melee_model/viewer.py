"""A self-contained HTML page that plays rollouts (or bare replays) frame by frame in the browser.

The data contract is this module's own, so that it does not follow the rollout code's internals:
- `ViewerRollout`: one stretch of a game in game units: `true` (and `pred`, None for a bare replay)
  map each of VIEWER_FIELDS to an (H, 2) array (player axis last); `controls` maps each of
  CONTROL_FIELDS to (H, 2): the replay's controller input that drove each frame (sticks in [-1, 1],
  shoulder in [0, 1], buttons a bit mask over BUTTON_NAMES).
- `HorizonCurves`: per metric ("pos_error", "action_match"), per series ("model", "copy_last",
  "constant_velocity", ...) an (H,) array over the horizon: the error-against-horizon plot.
`frames_for_viewer` and `controls_for_viewer` read those fields out of encoded frames by column name
through the store's `Schema`, decoded to game units. `write_html` writes one file holding N rollouts:
the page's JS, CSS and data are inline (viewer_assets/), so it opens from disk with no network.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from melee_encode.actions import action_names
from melee_encode.config import BUTTON_BITS, Schema
from melee_encode.errors import ConfigError
from melee_encode.ids import character_name, stage_name
from melee_encode.stage_geometry import stage_geometry
from melee_encode.store import Store

# Per-player fields the page shows; floats are decoded to game units, action is the int id.
VIEWER_FIELDS = ("x", "y", "facing", "action", "percent", "stocks", "on_ground")
CONTROL_FIELDS = ("main_x", "main_y", "c_x", "c_y", "shoulder", "buttons")
BUTTON_NAMES = tuple(name for name, _ in BUTTON_BITS)
METRICS = ("pos_error", "action_match")
# Decimals kept in the page: positions and damage to 0.01, sticks to 0.001 (their steps are 1/80).
DECIMALS = {"x": 2, "y": 2, "percent": 2, "stocks": 2, "main_x": 3, "main_y": 3, "c_x": 3, "c_y": 3, "shoulder": 3}
ASSETS = ("viewer.html", "viewer.css", "viewer_draw.js", "viewer.js")


@dataclass
class ViewerRollout:
    """One rollout (or replay stretch) to play: frames t0 .. t0+H-1 of a game."""

    title: str
    source: str  # the replay it comes from
    game: int  # row of the store's game table
    t0: int  # the game's frame index of the first frame shown
    stage: int  # peppi stage id
    characters: tuple[int, int]  # internal character ids of p0, p1
    true: dict[str, np.ndarray]  # VIEWER_FIELDS -> (H, 2)
    pred: dict[str, np.ndarray] | None  # the same, predicted; None for a bare replay
    controls: dict[str, np.ndarray]  # CONTROL_FIELDS -> (H, 2)

    @property
    def frames(self) -> int:
        return len(self.true["x"])


@dataclass
class HorizonCurves:
    """Error against horizon: metric (METRICS) -> series name -> (H,) values at predicted frames 1..H."""

    curves: dict[str, dict[str, np.ndarray]]


def frames_for_viewer(schema: Schema, floats: np.ndarray, ints: np.ndarray) -> dict[str, np.ndarray]:
    """VIEWER_FIELDS of encoded frames, (H, F) floats and (H, I) ints: field -> (H, 2), game units."""
    out = {}
    for field in VIEWER_FIELDS:
        names = [f"p{p}.{field}" for p in (0, 1)]
        if field == "action":
            out[field] = np.stack([ints[:, schema.int_index(n)] for n in names], axis=-1).astype(np.int64)
        else:
            out[field] = np.stack([schema.decode_float(floats[:, schema.float_index(n)], n) for n in names], axis=-1)
    return out


def controls_for_viewer(schema: Schema, floats: np.ndarray) -> dict[str, np.ndarray]:
    """CONTROL_FIELDS of encoded frames (H, F): sticks and shoulder (H, 2) in game units, buttons (H, 2) bit masks."""
    out = {}
    for field in CONTROL_FIELDS[:-1]:
        names = [f"p{p}.{field}" for p in (0, 1)]
        out[field] = np.stack([schema.decode_float(floats[:, schema.float_index(n)], n) for n in names], axis=-1)
    masks = np.zeros((len(floats), 2), dtype=np.int64)
    for bit, button in enumerate(BUTTON_NAMES):
        for p in (0, 1):
            masks[:, p] |= (floats[:, schema.float_index(f"p{p}.button_{button}")] > 0.5).astype(np.int64) << bit
    out["buttons"] = masks
    return out


def store_rollouts(
    store: Store, starts, frames, pred_floats: np.ndarray | None = None, pred_ints: np.ndarray | None = None
) -> list[ViewerRollout]:
    """ViewerRollouts of frames t0 .. t0+H-1 of each (game row, t0) in `starts`, read back from `store`.

    frames: H, one for all or one per start. pred_floats (N, H, F) and pred_ints (N, H, I), when given,
    are the predicted frames (e.g. a rollout's), decoded like the true ones.
    """
    starts = np.asarray(starts, dtype=np.int64).reshape(-1, 2)
    lengths = np.broadcast_to(np.asarray(frames, dtype=np.int64), (len(starts),))
    schema, games = store.schema, store.games
    out = []
    for n, ((game, t0), length) in enumerate(zip(starts.tolist(), lengths.tolist())):
        floats, ints, _ = store.read_frames(game, t0, t0 + length)  # (H, F), (H, I)
        if len(floats) != length:
            raise ConfigError(f"game {game} has no frames {t0} .. {t0 + length - 1}")
        pred = None if pred_floats is None else frames_for_viewer(schema, pred_floats[n], pred_ints[n])
        out.append(
            ViewerRollout(
                title=f"game {game} from frame {t0}",
                source=str(games["source"][game]),
                game=game,
                t0=t0,
                stage=int(games["stage"][game]),
                characters=tuple(int(c) for c in games["characters"][game]),
                true=frames_for_viewer(schema, floats, ints),
                pred=pred,
                controls=controls_for_viewer(schema, floats),
            )
        )
    return out


def page_data(rollouts: Sequence[ViewerRollout], curves: HorizonCurves | None = None, title: str = "rollouts") -> dict:
    """The JSON the page reads: every rollout's fields as per-player lists, names resolved, stage shapes."""
    if not rollouts:
        raise ConfigError("the viewer needs at least one rollout")
    unknown = sorted(set(curves.curves) - set(METRICS)) if curves is not None else []
    if unknown:
        raise ConfigError(f"unknown horizon metric(s) {', '.join(unknown)}; the page plots {', '.join(METRICS)}")
    stages = {r.stage for r in rollouts}
    return {
        "title": title,
        "buttons": list(BUTTON_NAMES),
        "stages": {str(s): g.to_dict() for s in sorted(stages) if (g := stage_geometry(s)) is not None},
        "rollouts": [_rollout_json(r) for r in rollouts],
        "curves": None if curves is None else {m: {s: _values(v, 4) for s, v in series.items()} for m, series in curves.curves.items()},
    }


def write_html(path: str | Path, rollouts: Sequence[ViewerRollout], curves: HorizonCurves | None = None, title: str = "rollouts") -> Path:
    """Write the page holding `rollouts` (and the horizon plot of `curves`) to `path`; returns the path."""
    data = json.dumps(page_data(rollouts, curves, title), separators=(",", ":"), allow_nan=False)
    template, style, draw, script = (
        resources.files("melee_model").joinpath("viewer_assets", name).read_text(encoding="utf-8") for name in ASSETS
    )
    page = _fill(
        template,
        {
            "__TITLE__": html.escape(title),
            "/*STYLE*/": style,
            "/*DRAW*/": draw,
            "/*SCRIPT*/": script,
            # "</" would end the script element holding the data early.
            "__DATA__": data.replace("</", "<\\/"),
        },
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace each placeholder (each must occur exactly once) in one pass, so inserted text is never rescanned."""
    for key in values:
        if template.count(key) != 1:
            raise ConfigError(f"viewer template must hold {key} exactly once")
    pattern = "|".join(re.escape(key) for key in values)
    return re.sub(pattern, lambda match: values[match.group(0)], template)


def _rollout_json(rollout: ViewerRollout) -> dict:
    frames = rollout.frames
    for kind, fields in (("true", rollout.true), ("pred", rollout.pred), ("controls", rollout.controls)):
        for name, values in (fields or {}).items():
            if np.shape(values) != (frames, 2):
                raise ConfigError(f"{rollout.title}: {kind}[{name!r}] has shape {np.shape(values)}, expected ({frames}, 2)")
    actions = [rollout.true["action"][:, p] for p in (0, 1)]
    if rollout.pred is not None:
        actions = [np.concatenate([a, rollout.pred["action"][:, p]]) for p, a in enumerate(actions)]
    return {
        "title": rollout.title,
        "source": rollout.source,
        "game": int(rollout.game),
        "t0": int(rollout.t0),
        "frames": frames,
        "stage": int(rollout.stage),
        "stage_name": stage_name(int(rollout.stage)),
        "characters": [int(c) for c in rollout.characters],
        "character_names": [character_name(int(c)) for c in rollout.characters],
        "true": _fields(rollout.true, VIEWER_FIELDS),
        "pred": None if rollout.pred is None else _fields(rollout.pred, VIEWER_FIELDS),
        "controls": _fields(rollout.controls, CONTROL_FIELDS),
        # Names of the ids that occur, per player (ids from 341 on depend on the character).
        "action_names": [{str(i): n for i, n in action_names(actions[p], rollout.characters[p]).items()} for p in (0, 1)],
    }


def _fields(values: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, list]:
    """field -> [p0 values, p1 values] (each a list of H numbers), rounded to DECIMALS or as ints."""
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"viewer fields missing: {', '.join(missing)}")
    return {n: [_values(np.asarray(values[n])[:, p], DECIMALS.get(n)) for p in (0, 1)] for n in names}


def _values(values: np.ndarray, decimals: int | None) -> list:
    """A list for JSON: ints stay ints, floats are rounded; NaN and inf become null."""
    values = np.asarray(values)
    if decimals is None and np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64).tolist()
    if decimals is None:  # binary fields (facing, on_ground) and ids held as floats
        return [None if not math.isfinite(v) else int(round(v)) for v in values.tolist()]
    rounded = np.round(values.astype(np.float64), decimals) + 0.0  # + 0.0: no "-0.0", which JS prints as "0.00"
    if np.isfinite(rounded).all():
        return rounded.tolist()
    return [v if math.isfinite(v) else None for v in rounded.tolist()]
