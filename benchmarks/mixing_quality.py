"""Does the loader's mixing cost model quality? The same short training with several groupings, same run.

    python benchmarks/mixing_quality.py [--store TRAIN] [--val-store VAL] [--objective last|sequence]
        [--steps 1500] [--batch-size N] [--seq-len 64] [--seed 0] [--val-batches N] [--json]

Trains the objective's experiment at the small width (d_model 128, 2 layers; its optimizer) for
--steps steps on every game of the train store (default: ../shared/corpus encoded to a temporary
store), once per grouping, then evaluates each on every game of the held-out store (default:
../shared/replays, games none of the runs trained on; --val-batches: at most N batches of them).
With --objective last (the default): experiments/mamba2-v3-65k-ranked.yaml, batches of 256 examples:
- mixed: the default (data.piece_frames x data.pieces_per_group pieces from all over the store);
- chunk_hands: the same pieces dealt into hands of one stored chunk (data.chunk_visits 8: faster);
- large_pieces: the same memory in 256 pieces of 3,072 frames (this loader's first default);
- one_group: every stored chunk in one group, a full shuffle of the store (memory grows with it);
- chunk_groups: whole chunks, 4 to a group, the grouping before this loader.
With --objective sequence: experiments/mamba2-v3-seq.yaml, batches of 32 windows of --seq-len frames:
- mixed: the yaml's grouping (pieces of 65,536 frames, two stored chunks, 8 to a group);
- narrow: the same pieces, 2 to a group: a batch holds about the share of uniform sampling's games
  that the yaml's batches hold at 5,000 games (README, "Batches that mix the whole store");
- small_pieces: 512 pieces of 1,024 frames a group (mixes more; decodes a chunk per piece);
- one_group: a full shuffle, as above.
Each run stops at --steps or at the end of its first epoch (train.epochs 1), whichever comes first:
at the small width an epoch of the corpus's windows of 64 is 758 steps of 32, each target seen once.
Validation reads the card's K-frame examples whatever the objective (melee_model.evaluate).
Per grouping also the distinct games in a batch (the first 100 full batches of its first epoch)
against uniform sampling of the same items. The target: mixed's held-out val_loss/total within 3%
of one_group's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _mixing import GameIndex, items_per_game, uniform_distinct  # noqa: E402

from melee_encode import EncodeOptions, encode  # noqa: E402
from melee_model.config import ExperimentConfig, load_config  # noqa: E402
from melee_model.evaluate import evaluate_checkpoint  # noqa: E402
from melee_model.examples import ExampleSource  # noqa: E402
from melee_model.train import Trainer  # noqa: E402

from _report import emit  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = {
    "last": os.path.join(ROOT, "experiments", "mamba2-v3-65k-ranked.yaml"),
    "sequence": os.path.join(ROOT, "experiments", "mamba2-v3-seq.yaml"),
}
FULL_SHUFFLE = ["data.piece_frames=0", "data.pieces_per_group=1000000000"]
GROUPINGS = {  # per objective; "mixed" is the experiment's own grouping
    "last": {
        "mixed": [],
        "chunk_hands": ["data.chunk_visits=8"],
        "large_pieces": ["data.piece_frames=3072", "data.pieces_per_group=256"],
        "one_group": FULL_SHUFFLE,
        "chunk_groups": ["data.piece_frames=0", "data.pieces_per_group=4"],
    },
    "sequence": {
        "mixed": [],
        "narrow": ["data.pieces_per_group=2"],
        "small_pieces": ["data.piece_frames=1024", "data.pieces_per_group=512"],
        "one_group": FULL_SHUFFLE,
    },
}
BATCH_SIZES = {"last": 256, "sequence": 32}  # examples; windows
COUNTED_BATCHES = 100
REPORTED = {  # JSON name -> the validation metric's key
    "val_loss": "val_loss/total",
    "val_change_acc": "val_metric/change_acc_both",
    "val_change_acc_p0": "val_metric/action_change_acc",
    "val_pos_mae": "val_metric/position_mae",
    "val_action_acc_p0": "val_metric/p0_action_acc",
}


def small_run(steps: int, batch_size: int, seed: int) -> list[str]:
    return [
        f"data.seed={seed}",
        f"train.seed={seed}",
        "model.d_model=128",
        "model.n_layers=2",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        "data.end_methods=[]",
        "data.require_fields=none",
        "data.val_fraction=0.0",
        "train.epochs=1",
        f"train.max_steps={steps}",
        f"train.log_interval={max(1, steps // 10)}",
        "train.checkpoint_every=0",
        "train.min_val_change_acc=null",
        "train.patience_batches=0",
        "wandb.enabled=false",
    ]


def games_per_batch(config: ExperimentConfig, store: str) -> tuple[float, float]:
    """(mean distinct games in the first COUNTED_BATCHES full train batches of epoch 0, the same
    expected of uniform sampling over the split's items)."""
    source = ExampleSource.for_experiment(store, config)
    size, full = config.data.batch_size, []
    for batch in source.loader("train", 0, num_workers=0):
        if len(batch["example_id"]) == size:
            full.append(batch["example_id"].numpy())
        if len(full) == COUNTED_BATCHES:
            break
    return GameIndex(source).games_per_batch(full), uniform_distinct(items_per_game(source.pieces["train"]), size)


def train_and_score(
    experiment: str, name: str, overrides: list[str], store: str, val_store: str, output: str, val_batches: int | None
) -> dict:
    config = load_config(experiment, overrides + [f"name=mixing-{name}"])
    distinct, uniform = games_per_batch(config, store)
    started = time.perf_counter()
    trainer = Trainer(config, store, output_dir=output, progress_bar=False)
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines; stdout keeps the table or the JSON
        trainer.fit()
    seconds = time.perf_counter() - started
    evaluation = evaluate_checkpoint(os.path.join(output, "latest"), val_store, split="all", max_batches=val_batches, num_workers=0)
    return {
        **{name: evaluation.metrics[key] for name, key in REPORTED.items()},
        "train_s": seconds,
        "steps": trainer.progress.step,
        "val_examples": evaluation.examples,
        "distinct_games_per_batch": distinct,
        "uniform_distinct_games_per_batch": uniform,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="the store to train on (default: ../shared/corpus, encoded here)")
    parser.add_argument("--val-store", help="held-out games (default: ../shared/replays, encoded here)")
    parser.add_argument("--objective", choices=sorted(EXPERIMENTS), default="last")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, help="examples (last: 256) or windows (sequence: 32) a batch")
    parser.add_argument("--seq-len", type=int, default=64, help="window frames (sequence; default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data.seed and train.seed of every run (default %(default)s)")
    parser.add_argument("--val-batches", type=int, help="evaluate each run on at most this many batches (default: every held-out example)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    batch_size = args.batch_size or BATCH_SIZES[args.objective]
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="mixing-quality-") as tmp:
        stores = {}
        for name, given, replays in (("train", args.store, "../shared/corpus"), ("val", args.val_store, "../shared/replays")):
            stores[name] = given or os.path.join(tmp, f"{name}.zarr")
            if given is None:
                encode([os.path.join(ROOT, replays)], stores[name], EncodeOptions(progress=False, workers=2))
        small = small_run(args.steps, batch_size, args.seed)
        if args.objective == "sequence":
            small.append(f"data.seq_len={args.seq_len}")
        experiment = EXPERIMENTS[args.objective]
        results = {
            name: train_and_score(
                experiment, name, small + extra, stores["train"], stores["val"], os.path.join(tmp, name), args.val_batches
            )
            for name, extra in GROUPINGS[args.objective].items()
        }
    mixed, full = results["mixed"]["val_loss"], results["one_group"]["val_loss"]
    figures = {
        **results,
        "mixed_over_one_group": mixed / full,
        "objective": args.objective,
        "max_steps": args.steps,
        "seed": args.seed,
        "batch_size": batch_size,
        "target_ratio": 1.03,
    }
    rows = [
        (
            f"{name}: held-out val_loss/total",
            f"{r['val_loss']:.4f}",
            f"change_acc {r['val_change_acc']:.3f}, pos_mae {r['val_pos_mae']:.3f}, {r['steps']} steps, {r['train_s']:.0f} s; "
            f"{r['distinct_games_per_batch']:.1f} games a batch (uniform {r['uniform_distinct_games_per_batch']:.1f})",
        )
        for name, r in results.items()
    ]
    rows.append(("mixed / one_group", f"{mixed / full:.3f}", "target <= 1.03"))
    items = f"{batch_size} windows of {args.seq_len}" if args.objective == "sequence" else f"{batch_size}"
    emit(
        figures,
        args.json,
        f"mixing and model quality, {args.objective} (at most {args.steps} steps of {items}, d_model 128, 2 layers)",
        rows,
    )


if __name__ == "__main__":
    main()
