"""Does the loader's mixing cost model quality? The same short training with five groupings, same run.

    python benchmarks/mixing_quality.py [--store TRAIN] [--val-store VAL] [--steps 1500] [--val-batches N] [--json]

Trains the card's objective (small width: d_model 128, 2 layers; batch 256; the card's optimizer) for
--steps steps on every game of the train store (default: ../shared/corpus encoded to a temporary
store), once per grouping, then evaluates each on every game of the held-out store (default:
../shared/replays, games none of the runs trained on; --val-batches: at most N batches of them):
- mixed: the default (data.piece_frames x data.pieces_per_group pieces from all over the store);
- chunk_hands: the same pieces dealt into hands of one stored chunk (data.chunk_visits 8: faster);
- large_pieces: the same memory in 256 pieces of 3,072 frames (this loader's first default);
- one_group: every stored chunk in one group, a full shuffle of the store (memory grows with it);
- chunk_groups: whole chunks, 4 to a group, the grouping before this loader.
The target: mixed's held-out val_loss/total within 3% of one_group's.
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
from melee_encode import EncodeOptions, encode  # noqa: E402
from melee_model.config import load_config  # noqa: E402
from melee_model.evaluate import evaluate_checkpoint  # noqa: E402
from melee_model.train import Trainer  # noqa: E402

from _report import emit  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARD = os.path.join(ROOT, "experiments", "mamba2-v3-65k-ranked.yaml")
GROUPINGS = {
    "mixed": [],
    "chunk_hands": ["data.chunk_visits=8"],
    "large_pieces": ["data.piece_frames=3072", "data.pieces_per_group=256"],
    "one_group": ["data.piece_frames=0", "data.pieces_per_group=1000000000"],
    "chunk_groups": ["data.piece_frames=0", "data.pieces_per_group=4"],
}
REPORTED = {  # JSON name -> the validation metric's key
    "val_loss": "val_loss/total",
    "val_change_acc": "val_metric/change_acc_both",
    "val_change_acc_p0": "val_metric/action_change_acc",
    "val_pos_mae": "val_metric/position_mae",
    "val_action_acc_p0": "val_metric/p0_action_acc",
}


def small_run(steps: int, batch_size: int) -> list[str]:
    return [
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


def train_and_score(name: str, overrides: list[str], store: str, val_store: str, output: str, val_batches: int | None) -> dict:
    config = load_config(CARD, overrides + [f"name=mixing-{name}"])
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines; stdout keeps the table or the JSON
        Trainer(config, store, output_dir=output, progress_bar=False).fit()
    seconds = time.perf_counter() - started
    evaluation = evaluate_checkpoint(os.path.join(output, "latest"), val_store, split="all", max_batches=val_batches, num_workers=0)
    return {**{name: evaluation.metrics[key] for name, key in REPORTED.items()}, "train_s": seconds, "val_examples": evaluation.examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="the store to train on (default: ../shared/corpus, encoded here)")
    parser.add_argument("--val-store", help="held-out games (default: ../shared/replays, encoded here)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--val-batches", type=int, help="evaluate each run on at most this many batches (default: every held-out example)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="mixing-quality-") as tmp:
        stores = {}
        for name, given, replays in (("train", args.store, "../shared/corpus"), ("val", args.val_store, "../shared/replays")):
            stores[name] = given or os.path.join(tmp, f"{name}.zarr")
            if given is None:
                encode([os.path.join(ROOT, replays)], stores[name], EncodeOptions(progress=False, workers=2))
        small = small_run(args.steps, args.batch_size)
        results = {
            name: train_and_score(name, small + extra, stores["train"], stores["val"], os.path.join(tmp, name), args.val_batches)
            for name, extra in GROUPINGS.items()
        }
    mixed, full = results["mixed"]["val_loss"], results["one_group"]["val_loss"]
    figures = {**results, "mixed_over_one_group": mixed / full, "steps": args.steps, "batch_size": args.batch_size, "target_ratio": 1.03}
    rows = [
        (
            f"{name}: held-out val_loss/total",
            f"{r['val_loss']:.4f}",
            f"change_acc {r['val_change_acc']:.3f}, pos_mae {r['val_pos_mae']:.3f}, {r['train_s']:.0f} s",
        )
        for name, r in results.items()
    ]
    rows.append(("mixed / one_group", f"{mixed / full:.3f}", "target <= 1.03"))
    emit(figures, args.json, f"mixing and model quality ({args.steps} steps of {args.batch_size}, d_model 128, 2 layers)", rows)


if __name__ == "__main__":
    main()
