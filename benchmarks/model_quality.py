"""Model quality at equal CPU time: the card's objective against the sequence objective, both against
the rollout baselines, on the same validation games.

    python benchmarks/model_quality.py --store S [--val-store V] [--minutes M] [--width small|card] [--json]
        [--rollouts N] [--sampling RATE [--sampling-mode model|rollout]] [--output DIR]
        [--settings FILE] [--seed N] [--last-set KEY=VALUE ...] [--sequence-set KEY=VALUE ...]

Trains experiments/mamba2-v3-65k-ranked.yaml (objective "last") and experiments/mamba2-v3-seq.yaml
(objective "sequence") on S for the same wall-clock budget each (--minutes, default 10; the trainer's
train.max_seconds, with the lr's cosine over those seconds of wall clock, train.lr_schedule
"per_second", so that it ends with the run however fast the steps turn out to be), at the
small width (d_model 128, 2 layers) or the card's, then evaluates both on the same games: V's, or S's
val split. Both train without scheduled sampling (the card's noise starts after a whole epoch, which
a short budget may not reach for one objective and pass for the other); --sampling RATE trains a
third model, "sequence_sampled", with the model's own predictions as inputs (--sampling-mode: "model",
one-step predictions for that fraction of input frames, or "rollout", that fraction of windows rolled
out from a random position on; full rate from the second epoch, delta targets from the frame it
reads). Batches at the small width: 256 examples ("last") and 32 windows of 64 positions
("sequence"); --settings FILE (YAML: lists of KEY=VALUE under "both", "last", "sequence"; the
settings of a README run, e.g. benchmarks/quality_settings/x1.yaml), then --seed N (train.seed and
data.seed of every model), then --last-set / --sequence-set override any config value.

Figures per model: the card's teacher-forced metrics at K = 10 context frames (val_*), the same over
the sequence windows (own_*: the sequence model's own context, 1 .. seq_len frames; the card model
read that way too), and --rollouts rollouts of 300 frames from the same start points, recurrent
(`rollout_*`) and with a K-frame window per step (`window_rollout_*`), next to the baselines
copy_last and constant_velocity on the very same windows. Paired on those rollouts, each model's
recurrent pos_error over the card objective's and over each baseline's at every horizon, with a 90%
interval from resampling the val games (`rollout_pos_error_vs_<other>_<h>`: [ratio, low, high]); the
median pos_error over the rollouts (`rollout_pos_error_median_<h>`) and the motion ratio
(`rollout_motion_ratio_<h>`: how far the players were moved from the last real frame over how far
the replay moved them; copy_last 0), for every model and baseline, since a model that moves the
players less can lower its mean error while its typical rollout gets worse; and the pos_error of
the players who started below the main platform's level, on it, above it, and of those the replay
keeps within 5 units (`rollout_pos_error_<below|level|above|still>_<h>`), which says where a
predictor's error comes from; and the pos_error of the best hedge of each predictor's rollouts
(`rollout_pos_error_hedged_<h>`: its players pulled toward where they started by a factor per start
level and axis, fit on the games of one parity and read on the other's), what moving the players
less, and nothing else, could give it. With
64 rollouts the interval of a sequence/card ratio at 60 frames was 0.10-0.14 wide (README, "How many
rollouts a ratio needs"), hence the default of 512. `targets` counts the target rows of the steps
taken (unrolled rows from train.unroll.start_epoch on). Training uses --threads torch threads
(default 1: on a shared 2-core machine a second thread made small steps 2-7x slower, measured);
evaluation always one.
JSON: {"last": {...}, "sequence": {...}, "baselines": {"copy_last": {...}, "constant_velocity": {...}}, "setup": {...}}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = Path(HERE).parent
sys.path.insert(0, HERE)
from melee_model.baselines import BASELINES  # noqa: E402
from melee_model.config import ExperimentConfig, load_config  # noqa: E402
from melee_model.examples import ExampleSource  # noqa: E402
from melee_model.horizons import at_horizons, curves_of, report_at  # noqa: E402
from melee_model.metrics import VAL_PREFIX  # noqa: E402
from melee_model.quality import (  # noqa: E402
    START_LEVELS,
    baseline_rollouts,
    card_config,
    errors_by_start,
    hedged_errors,
    median_errors,
    motion_ratios,
    paired_ratio,
    rollout_starts,
    teacher_forced,
)
from melee_model.rollout import rollout_windows, store_windows  # noqa: E402
from melee_model.train import Trainer  # noqa: E402

CONFIGS = {"last": ROOT / "experiments" / "mamba2-v3-65k-ranked.yaml", "sequence": ROOT / "experiments" / "mamba2-v3-seq.yaml"}
WIDTHS = {"small": ["model.d_model=128", "model.n_layers=2"], "card": []}
BATCHES = {
    "small": {"last": ["data.batch_size=256"], "sequence": ["data.batch_size=32", "data.seq_len=64"]},
    "card": {"last": [], "sequence": []},
}
# Every run: all games of the store, loading in the training process, no early stops, no logging services.
RUN = [
    "data.require_fields=none",
    "data.end_methods=[]",
    "data.num_workers=0",
    "wandb.enabled=false",
    "train.epochs=100000",
    "train.min_val_change_acc=null",
    "train.patience_batches=0",
    "train.val_batches=2",
    "train.log_interval=100000",
    "train.checkpoint_every=0",
    "train.scheduled_sampling.rate=0",
    "train.mixed_precision='no'",
    "train.lr_schedule=per_second",
]
SAMPLED = ["train.scheduled_sampling.anneal_epochs=0", "train.scheduled_sampling.targets=noisy"]
# The figures' names (the issue's) -> the trainer's metric keys: change_acc over both players, the
# reference's p0-only change_acc, position MAE (game units), p0 action accuracy, the total loss, and
# the hold gate's accuracy (model.hold_gate; null for a model without one).
TEACHER_FORCED = {
    "change_acc": "metric/change_acc_both",
    "change_acc_p0": "metric/action_change_acc",
    "pos_mae": "metric/position_mae",
    "action_acc_p0": "metric/p0_action_acc",
    "loss": "loss/total",
    "hold_acc": "metric/hold_acc",
}
ROLLOUT_ROWS = ("pos_error", "pos_error_euclid", "action_match", "on_ground_match", "facing_match", "stocks_match", "damage_error")


def settings_overrides(path: str | None, seed: int | None) -> dict[str, list[str]]:
    """Each objective's KEY=VALUE overrides from a --settings file ("both" first) and --seed."""
    settings = {}
    if path is not None:
        with open(path) as f:
            settings = yaml.safe_load(f) or {}
    if not isinstance(settings, dict) or not all(isinstance(lines, list) for lines in settings.values()):
        raise SystemExit(f"{path}: a settings file maps both, last and sequence to lists of KEY=VALUE")
    unknown = sorted(set(settings) - {"both", "last", "sequence"})
    if unknown:
        raise SystemExit(f"{path}: unknown keys {', '.join(unknown)}; a settings file has lists under both, last and sequence")
    seeds = [] if seed is None else [f"train.seed={seed}", f"data.seed={seed}"]
    return {name: [*settings.get("both", []), *settings.get(name, []), *seeds] for name in ("last", "sequence")}


def train_for(config: ExperimentConfig, store: str, seconds: float, output: str) -> tuple[torch.nn.Module, dict, list | None]:
    """A model trained for `seconds` of wall clock; its steps, seconds and targets; the float errors'
    divisors it trained with (loss.float_weighting "target_std"; None for "encoded")."""
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, max_seconds=seconds))
    trainer = Trainer(config, store, output_dir=output, progress_bar=False)
    started = time.perf_counter()
    trainer.fit()
    run = {
        "steps": trainer.progress.step,
        "train_s": time.perf_counter() - started,
        "targets": targets_trained(config, trainer.progress.step, trainer.updates_per_epoch),
    }
    scale = None if trainer.float_scale is None else trainer.float_scale.tolist()
    return trainer.accelerator.unwrap_model(trainer.model).eval(), run, scale


def targets_trained(config: ExperimentConfig, steps: int, steps_per_epoch: int) -> int:
    """Target rows in `steps` full batches: one per example ("last"), or every position past the
    warm-up of each window, plus the unrolled frames of each window from train.unroll.start_epoch on."""
    data, unroll = config.data, config.train.unroll
    if data.objective != "sequence":
        return steps * data.batch_size
    unrolled_steps = max(0, steps - unroll.start_epoch * steps_per_epoch) if unroll.frames else 0
    return data.batch_size * (steps * (data.seq_len - data.warmup) + unrolled_steps * unroll.frames)


def assess(
    model, name: str, configs: dict, sources: dict, split: str, windows, starts, max_batches: int | None, scale
) -> tuple[dict, np.ndarray]:
    """One model's figures (flat keys), and its recurrent rollouts' pos_error (N, H) per rollout, from
    the real windows (floats, ints) that every model and baseline rolls out from; `scale`: train_for's."""
    device = torch.device("cpu")
    card, sequence = card_config(configs[name]), configs["sequence"]
    tf, _ = teacher_forced(model, sources["card"], card, split, device, max_batches, trained_scale=scale)
    own, _ = teacher_forced(model, sources["sequence"], sequence, split, device, max_batches, trained_scale=scale)
    figures = {f"val_{name}": tf.get(VAL_PREFIX + key, math.nan) for name, key in TEACHER_FORCED.items()}
    figures.update({f"own_{name}": own.get(VAL_PREFIX + key, math.nan) for name, key in TEACHER_FORCED.items()})
    layout = sources["card"].layout
    recurrent = rollout_windows(model, layout, *windows, starts, device, stepping="recurrent")
    window = rollout_windows(model, layout, *windows, starts, device, stepping="window")
    figures.update(rollout_keys(recurrent.metrics, "rollout_"))
    figures.update(spread_keys(layout, windows, starts[:, 0], recurrent.per_rollout["pos_error"], recurrent.pred_floats))
    figures.update(rollout_keys(window.metrics, "window_rollout_"))
    return figures, recurrent.per_rollout["pos_error"]


def spread_keys(layout, windows, games: np.ndarray, pos_error: np.ndarray, pred_floats: np.ndarray) -> dict:
    """A predictor's median pos_error, motion ratio, pos_error by the players' start and its best
    hedge's pos_error at every horizon of its rollouts (quality's median_errors, motion_ratios,
    errors_by_start, hedged_errors): pos_error (N, H), pred_floats (N, H, F), windows the real ones,
    games (N,) each rollout's game."""
    horizons = report_at(pos_error.shape[1])
    return {
        **median_errors(pos_error, horizons),
        **motion_ratios(layout, windows[0], pred_floats, horizons),
        **errors_by_start(layout, windows[0], pred_floats, horizons),
        **hedged_errors(layout, windows[0], pred_floats, games, horizons),
    }


def paired_keys(errors: dict[str, np.ndarray], name: str, games: np.ndarray, horizons) -> dict:
    """Model `name`'s rollout pos_error over each other predictor's on the same rollouts, at each
    horizon, with the 90% interval over games: {"rollout_pos_error_vs_<other>_<h>": [ratio, low, high]}."""
    others = ([] if name == "last" else ["last"]) + list(BASELINES)
    return {
        f"rollout_pos_error_vs_{other}_{h}": list(paired_ratio(errors[other][:, h - 1], errors[name][:, h - 1], games))
        for other in others
        for h in horizons
    }


def rollout_keys(errors: dict, prefix: str) -> dict:
    """{h: {metric: v}} -> {prefix + metric + "_" + h: v}; "pos_error_h" is the per-coordinate mean."""
    return {f"{prefix}{metric}_{h}": value for h, values in errors.items() for metric, value in values.items()}


def table(results: dict, baselines: dict, horizons) -> list[str]:
    """One row per figure, a column per model and per baseline."""
    columns = {**results, **baselines}
    names = list(columns)
    width = max(20, *(len(n) + 2 for n in names))
    lines = [f"{'':<38}" + "".join(f"{n:>{width}}" for n in names)]

    def row(label: str, key: str, fmt: str = ".4f"):
        cells = [cell(columns[n].get(key), fmt) for n in names]
        lines.append(f"{label:<38}" + "".join(f"{c:>{width}}" for c in cells))

    row("steps", "steps", ",d")
    row("train seconds", "train_s", ".0f")
    row("targets trained", "targets", ",d")
    for name in TEACHER_FORCED:
        row(f"val_{name} (K=10)", f"val_{name}")
    for name in TEACHER_FORCED:
        row(f"{name} (own windows)", f"own_{name}")
    for h in horizons:
        for metric in ROLLOUT_ROWS:
            row(f"rollout {metric} @{h}", f"rollout_{metric}_{h}")
        row(f"rollout pos_error median @{h}", f"rollout_pos_error_median_{h}")
        row(f"rollout motion ratio @{h}", f"rollout_motion_ratio_{h}")
        row(f"rollout pos_error, best hedge @{h}", f"rollout_pos_error_hedged_{h}")
        for group in (*START_LEVELS, "still"):
            row(f"rollout pos_error, players {group} @{h}", f"rollout_pos_error_{group}_{h}")
        row(f"window rollout pos_error @{h}", f"window_rollout_pos_error_{h}")
        for other in ("last", *BASELINES):
            row(f"pos_error / {other}'s @{h}", f"rollout_pos_error_vs_{other}_{h}")
    return lines


def cell(value, fmt: str) -> str:
    """A table cell: a number, a paired ratio [ratio, low, high] as "r (low-high)", or "-" for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, list):
        return "{:.2f} ({:.2f}-{:.2f})".format(*value)
    return format(value, fmt)


def _finite(value):
    """NaN (a metric with nothing to count) as null, everywhere in a JSON value."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="the store both models train on")
    parser.add_argument("--val-store", help="evaluate on every game of this store (default: the store's val split)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall clock per model (default 10)")
    parser.add_argument("--width", choices=sorted(WIDTHS), default="small")
    parser.add_argument("--rollouts", type=int, default=512, help="rollouts of --horizon frames (default 512)")
    parser.add_argument("--horizon", type=int, default=300)
    parser.add_argument("--val-batches", type=int, help="at most this many batches per teacher-forced evaluation (default: all)")
    parser.add_argument(
        "--sampling", type=float, help="also train 'sequence_sampled': scheduled sampling with the model's own frames at this rate"
    )
    parser.add_argument(
        "--sampling-mode", choices=["model", "rollout"], default="model", help="sequence_sampled's scheduled_sampling.mode (default model)"
    )
    parser.add_argument("--settings", help="a YAML file of overrides: lists of KEY=VALUE under both, last and sequence")
    parser.add_argument("--seed", type=int, help="train.seed and data.seed of every model (default: the configs', 0)")
    parser.add_argument("--last-set", action="append", default=[], metavar="KEY=VALUE", help="override the card objective's config")
    parser.add_argument(
        "--sequence-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the sequence objective's config (and sequence_sampled's)",
    )
    parser.add_argument("--output", help="keep each model's run in DIR/<model> (its last checkpoint: latest/model.pt; default: removed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1; evaluation always uses 1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    horizons = report_at(args.horizon)

    common = RUN + WIDTHS[args.width]
    overrides = settings_overrides(args.settings, args.seed)
    overrides["last"] += args.last_set
    overrides["sequence"] += args.sequence_set
    configs = {name: load_config(CONFIGS[name], common + BATCHES[args.width][name] + overrides[name]) for name in CONFIGS}
    if args.sampling is not None:
        configs["sequence_sampled"] = load_config(
            CONFIGS["sequence"],
            common
            + BATCHES[args.width]["sequence"]
            + SAMPLED
            + [f"train.scheduled_sampling.mode={args.sampling_mode}", f"train.scheduled_sampling.rate={args.sampling}"]
            + overrides["sequence"],
        )
    val_store, split = (args.val_store, "all") if args.val_store else (args.store, "val")
    results, runs = {}, {}
    runs_dir = contextlib.nullcontext(args.output) if args.output else tempfile.TemporaryDirectory(prefix="model-quality-")
    with runs_dir as tmp, contextlib.redirect_stdout(sys.stderr):
        models, scales = {}, {}
        for name, config in configs.items():
            models[name], runs[name], scales[name] = train_for(config, args.store, 60 * args.minutes, os.path.join(tmp, name))
        torch.set_num_threads(1)  # rollouts step small batches: a second thread costs more than it gives
        sources = {
            "card": ExampleSource.for_experiment(val_store, card_config(configs["last"])),
            "sequence": ExampleSource.for_experiment(val_store, configs["sequence"]),
        }
        starts = rollout_starts(sources["card"], split, args.rollouts, args.horizon)
        layout, store = sources["card"].layout, sources["card"].store
        windows = store_windows(store, starts, layout.context_len, args.horizon)  # read once, for every predictor
        per_baseline = baseline_rollouts(layout, *windows)
        baselines = {
            name: {
                **rollout_keys(at_horizons(curves_of(e)), "rollout_"),
                **spread_keys(layout, windows, starts[:, 0], e["pos_error"], frames),
            }
            for name, (frames, e) in per_baseline.items()
        }
        errors = {name: e["pos_error"] for name, (_, e) in per_baseline.items()}
        for name, model in models.items():
            results[name], errors[name] = assess(model, name, configs, sources, split, windows, starts, args.val_batches, scales[name])
            results[name].update(runs[name], **paired_keys(errors, name, starts[:, 0], horizons))
    setup = {
        "store": args.store,
        "val_store": val_store,
        "split": split,
        "val_games": len(sources["card"].rows_of(split)),
        "minutes": args.minutes,
        "width": args.width,
        "rollouts": len(starts),
        "horizon": args.horizon,
        "threads": args.threads,
        "seq_len": configs["sequence"].data.seq_len,
        "batch_size": {name: c.data.batch_size for name, c in configs.items()},
        "sampling": args.sampling,
        "sampling_mode": args.sampling_mode if args.sampling is not None else None,
        "settings": args.settings,
        "seed": args.seed,
        "overrides": overrides,
    }
    if args.json:
        json.dump(_finite({**results, "baselines": baselines, "setup": setup}), sys.stdout, indent=1)
        print()
        return
    title = f"model quality: {args.minutes:g} min each, {args.width} width, {setup['val_games']} val games of {val_store}, {setup['rollouts']} rollouts"
    print(title)
    print("-" * len(title))
    print("\n".join(table(results, baselines, horizons)))
    print("pos_*: game units; damage_error: percent; *_match: fraction of players; rollouts recurrent unless 'window'")
    print("pos_error / X's: the model's mean over X's on the same rollouts (90% interval, games resampled)")


if __name__ == "__main__":
    main()
