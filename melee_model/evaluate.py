"""Evaluating a checkpoint: a split's metrics, autoregressive rollouts and their plot (behind scripts/evaluate.py).

The checkpoint's state.json gives the experiment config (encoding, data options, model); the weights
are read with `load_checkpoint` (tensors only, nothing unpickled). The store must hold the config's
encoding. Metrics are the trainer's: the same `MetricAccumulator`, keys with the "val_" prefix,
whatever the split, over the card's K-frame examples whatever objective trained the model, and for a
model trained with the sequence objective also over its own windows (`melee_model.quality`).
Rollouts come with the baselines on the same windows, error against horizon side by side. Split
"all" is every game the config's filters select (train and val); it is the split of `--replays`,
which are first encoded to a temporary store with the checkpoint's encoding. One process: the first
GPU if there is one, else the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from melee_encode import EncodeOptions, EncodingConfig, encode, open_store
from melee_encode.actions import action_name
from melee_encode.errors import ConfigError
from melee_model.checkpoint import load_weights, read_state
from melee_model.config import ExperimentConfig, from_dict
from melee_model.examples import ExampleSource
from melee_model.horizons import at_horizons, comparison_table
from melee_model.layout import FrameLayout
from melee_model.model import build_model
from melee_model.quality import MODEL, card_config, rollout_starts, rollouts_with_baselines, teacher_forced
from melee_model.rollout import RolloutResult, Trajectory
from melee_model.sampler import SPLITS
from melee_model.viewer import HorizonCurves, store_rollouts, write_html

EVAL_SPLITS = (*SPLITS, "all")


@dataclass
class Evaluation:
    """A checkpoint's figures on one split of a store."""

    split: str
    games: int
    examples: int
    metrics: dict[str, float]  # MetricAccumulator's, "val_" prefix, over the card's K-frame examples
    rollout: RolloutResult | None = None
    curves: dict | None = None  # {predictor: {metric: (H,)}}: the model's rollouts and the baselines' (horizons.mean_curves)
    sequence: dict[str, float] | None = None  # sequence-trained models: the metrics over their own windows
    sequence_targets: int = 0
    stage_floor: bool = False  # the rollouts' frame rule landed players on the main platform (model.stage_floor)
    own_frames: str = "all"  # what the rollouts read back (rollout.OWN_FRAMES): "all" but for a diagnostic

    @property
    def horizons(self) -> dict:
        """{predictor: {horizon: {metric: value}}} of the rollouts and the baselines."""
        return {name: at_horizons(curves) for name, curves in self.curves.items()}

    def to_json(self) -> dict:
        """The metrics, the split's size and, when run, "rollout": {horizon: {metric: value}} and
        "horizons": {predictor: {horizon: {metric: value}}}; "sequence": the metrics over the model's
        own windows, with "targets". NaN and inf as null."""
        finite = lambda values: {k: _finite(v) for k, v in values.items()}  # noqa: E731
        out = {"split": self.split, "games": self.games, "examples": self.examples, **finite(self.metrics)}
        if self.sequence is not None:
            out["sequence"] = {"targets": self.sequence_targets, **finite(self.sequence)}
        if self.rollout is not None:
            out["rollout"] = {str(h): finite(values) for h, values in self.rollout.metrics.items()}
            out["rollouts"] = len(self.rollout.starts)
            out["stage_floor"] = self.stage_floor
            out["own_frames"] = self.own_frames
            out["horizons"] = {name: {str(h): finite(values) for h, values in table.items()} for name, table in self.horizons.items()}
        return out


def default_device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def load_model(checkpoint: str | Path, config: ExperimentConfig, layout: FrameLayout, device) -> torch.nn.Module:
    """The checkpoint's model on `device`, in eval mode."""
    # The scan backend does not change the weights; "auto" runs a model trained with mamba-ssm's
    # kernels on a CPU too.
    model = build_model(dataclasses.replace(config.model, backend="auto"), layout)
    model.load_state_dict(load_weights(checkpoint))
    return model.to(device).eval()


def evaluate_checkpoint(
    checkpoint: str | Path,
    store: str | None = None,
    replays: Sequence[str] = (),
    *,
    split: str | None = None,
    max_batches: int | None = None,
    rollouts: int = 0,
    horizon: int = 300,
    seed: int = 0,
    device=None,
    num_workers: int | None = None,
    plot: str | Path | None = None,
    html: str | Path | None = None,
    storage_options: dict | None = None,
    stepping: str | None = None,
    stage_floor: bool | None = None,
    own_frames: str = "all",
) -> Evaluation:
    """A checkpoint's metrics on `split` of `store` (default "val") or of `replays` (default "all").

    rollouts > 0 also runs that many rollouts of `horizon` frames (`stepping`: rollout.STEPPINGS, None
    for the model's default; `stage_floor`: land players on the main platform, None for the
    checkpoint's model.stage_floor; the baselines follow the same rule; `own_frames`: what they read
    back, rollout.OWN_FRAMES) and the baselines on the same windows; `plot` then writes the first
    rollout's PNG, `html` a page that plays them all (melee_model.viewer).
    """
    if (store is None) == (not replays):
        raise ConfigError("give a store or replays to evaluate on (one of them)")
    split = split or ("all" if replays else "val")
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if (plot is not None or html is not None) and rollouts <= 0:
        raise ConfigError("a plot or page needs rollouts (rollouts > 0)")
    state = read_state(checkpoint)
    config = from_dict(ExperimentConfig, state["config"])  # the config it trained with
    if stage_floor is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, stage_floor=stage_floor))
    device = torch.device(device) if device is not None else default_device()
    with _store_for(store, replays, config.encoding) as path:
        options = storage_options if store is not None else None
        card = card_config(config)
        source = ExampleSource.for_experiment(path, card, options)
        layout = source.layout
        games = len(source.rows_of(split))
        if not games:
            raise ConfigError(f"no game of {path} is in split {split!r} after the config's data filters")
        model = load_model(checkpoint, config, layout, device)
        scale = state.get("float_scale")  # None: encoded errors, or a checkpoint from before it was kept
        metrics, examples = teacher_forced(model, source, card, split, device, max_batches, num_workers, scale)
        evaluation = Evaluation(split, games, examples, metrics, stage_floor=layout.stage_floor, own_frames=own_frames)
        if config.data.objective == "sequence":
            windows = ExampleSource.for_experiment(path, config, options)
            evaluation.sequence, evaluation.sequence_targets = teacher_forced(
                model, windows, config, split, device, max_batches, num_workers, scale
            )
        if rollouts > 0:
            starts = rollout_starts(source, split, rollouts, horizon, seed)
            evaluation.rollout, evaluation.curves = rollouts_with_baselines(
                model, layout, source.store, starts, horizon, device, stepping, own_frames
            )
            result = evaluation.rollout
            characters = tuple(source.store.games["characters"][result.first.start[0]])
        if html is not None:
            pages = store_rollouts(source.store, result.starts, horizon, result.pred_floats, result.pred_ints)
            baselines = {name: curves for name, curves in evaluation.curves.items() if name != MODEL}
            write_html(
                html,
                pages,
                rollout_curves(result, baselines),
                title=f"{Path(checkpoint).name}: {len(pages)} rollouts of {horizon} frames ({split})",
            )
    if plot is not None:
        plot_rollout(result.first, plot, characters)
    return evaluation


def rollout_curves(result: RolloutResult, baselines: dict | None = None) -> HorizonCurves:
    """The viewer's error-against-horizon curves of a rollout run: the model's, and the baselines' when
    given ({name: {metric: (H,)}}, as quality.rollouts_with_baselines gives them)."""
    metrics = ("pos_error", "action_match")
    return HorizonCurves(
        {
            metric: {"model": result.curves[metric], **{name: curves[metric] for name, curves in (baselines or {}).items()}}
            for metric in metrics
        }
    )


def write_replay_html(replays: Sequence[str], path: str | Path, title: str | None = None) -> int:
    """A page of the true games of `replays` (whole games, no model), encoded with the default encoding; returns the games shown."""
    with _store_for(None, replays, EncodingConfig()) as store_path:
        store = open_store(store_path)
        pages = store_rollouts(store, [(row, 0) for row in range(store.n_games)], store.games["length"][: store.n_games])
        for page in pages:
            page.title = Path(page.source).name
        write_html(path, pages, title=title or f"{len(pages)} replays")
    return len(pages)


def metrics_table(evaluation: Evaluation) -> str:
    """The metrics (beside those over the model's own windows, for a sequence model), then the rollouts
    against horizon beside the baselines, as aligned plain-text tables."""
    lines = [f"split {evaluation.split}: {evaluation.games} games, {evaluation.examples:,} examples"]
    width = max(map(len, evaluation.metrics))
    if evaluation.sequence is None:
        lines += [f"  {name:<{width}}  {value:.4f}" for name, value in evaluation.metrics.items()]
    else:
        lines.append(f"  {'':<{width}}  {'K-frame':>9}  {'own windows':>11}   ({evaluation.sequence_targets:,} targets)")
        lines += [
            f"  {name:<{width}}  {value:>9.4f}  {evaluation.sequence.get(name, math.nan):>11.4f}"
            for name, value in evaluation.metrics.items()
        ]
    if evaluation.rollout is not None:
        lines += [
            "",
            f"rollouts: {len(evaluation.rollout.starts)}, each from a real context with the replay's controllers"
            + (", landing on the main platform (stage floor)" if evaluation.stage_floor else "")
            + (f", reading back own {evaluation.own_frames} only (the replay's for the rest)" if evaluation.own_frames != "all" else "")
            + "; the baselines on the same windows (* the best of each row)",
        ]
        lines.append(comparison_table(evaluation.horizons))
        lines.append("pos_error: mean |pred - true| of x and y over both players; pos_error_euclid (the reference's): distance of (x, y)")
        lines.append("per player, averaged over the players; game units. damage_error: percent. *_match: fraction of players")
    return "\n".join(lines)


def plot_rollout(trajectory: Trajectory, path: str | Path, characters: tuple[int, int] | None = None) -> None:
    """A PNG of one rollout: x, y and action of both players, predicted (dashed) and true (solid).

    The action axis names the states that occur (ids from 341 on need `characters`, internal ids).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    frames = np.arange(1, len(trajectory.true["x"]) + 1)
    figure, axes = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
    for axis, field in zip(axes, ("x", "y", "action")):
        for player, color in ((0, "tab:blue"), (1, "tab:red")):
            draw = axis.step if field == "action" else axis.plot
            draw(frames, trajectory.true[field][:, player], color=color, label=f"p{player} true")
            draw(frames, trajectory.pred[field][:, player], color=color, linestyle="--", label=f"p{player} predicted")
        axis.set_ylabel("action" if field == "action" else f"{field} (game units)")
        axis.grid(alpha=0.3)
    name_action_ticks(axes[-1], trajectory, characters)
    axes[0].legend(loc="upper right", ncol=4, fontsize="small")
    axes[-1].set_xlabel("frames after the real context")
    game, t0 = trajectory.start
    figure.suptitle(f"rollout from game {game}, frame {t0}: predicted frames fed back, replay controllers")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def name_action_ticks(axis, trajectory: Trajectory, characters: tuple[int, int] | None, most: int = 24) -> None:
    """Tick the action axis at the ids the rollout visits, labelled "id name" (both players' names when they differ).

    When true and predicted states together are more than `most`, only the true ones are ticked, and
    an id too close to the one ticked below it (a label's height) is left out.
    """
    true = {int(i) for i in np.ravel(trajectory.true["action"])}
    both = true | {int(i) for i in np.ravel(trajectory.pred["action"])}
    ids = sorted(both if len(both) <= most else true)
    if len(ids) > most:  # too many to read: keep matplotlib's numeric ticks
        return
    low, high = axis.get_ylim()
    gap, kept = (high - low) / (2 * most), []
    for i in ids:
        if not kept or i - kept[-1] >= gap:
            kept.append(i)
    ids = kept
    players = characters if characters is not None else (None, None)
    labels = [" / ".join(dict.fromkeys(action_name(i, c) for c in players)) for i in ids]
    axis.set_yticks(ids, [f"{i} {label}" for i, label in zip(ids, labels)], fontsize="x-small")


@contextlib.contextmanager
def _store_for(store: str | None, replays: Sequence[str], encoding: EncodingConfig) -> Iterator[str]:
    """The store path to read: `store` itself, or a temporary store of `replays` in `encoding`."""
    if store is not None:
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="melee-eval-") as directory:
        path = str(Path(directory) / "replays.zarr")
        summary = encode(replays, path, EncodeOptions(config=encoding, progress=False))
        if not summary.store_games:
            reasons = "; ".join(f"{s.source}: {s.reason}" for s in summary.skipped[:3])
            raise ConfigError(f"none of the replays could be encoded ({reasons or 'no .slp files found'})")
        yield path


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
