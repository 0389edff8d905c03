"""Evaluate a checkpoint on a store or on replay files (thin entry point over melee_model.evaluate).

    python scripts/evaluate.py --checkpoint runs/tiny/best --store data/replays.zarr
    python scripts/evaluate.py --checkpoint runs/tiny/best --store data/replays.zarr --rollout --plot rollout.png
    python scripts/evaluate.py --checkpoint runs/tiny/best --replays games/ one.slp --json
    python scripts/evaluate.py --checkpoint runs/tiny/best --store data/replays.zarr --html rollouts.html
    python scripts/evaluate.py --replays game.slp --html replay.html    # no model: the replay itself

Metrics are the trainer's validation metrics ("val_" keys) over the split (val by default; "all" for
--replays: every game the checkpoint's data filters select), over the card's K-frame examples, and for
a model trained with the sequence objective also over its own windows. --rollout adds autoregressive
rollouts from start points spread over the split's games (the same for the same --seed), with the
baselines copy_last and constant_velocity on the same windows, error against horizon side by side.
--html writes one self-contained page that plays them (predicted against true); without --checkpoint
it plays the --replays' games as recorded.
"""

import argparse
import json
import sys

from melee_encode.errors import run_command
from melee_encode.storage import add_storage_option_argument, parse_storage_options
from melee_model.evaluate import EVAL_SPLITS, evaluate_checkpoint, metrics_table, write_replay_html
from melee_model.rollout import OWN_FRAMES, STEPPINGS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a checkpoint directory or link, e.g. runs/<name>/best (optional with --replays --html)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--store", help="a melee-encode store in the checkpoint's encoding")
    data.add_argument("--replays", nargs="+", metavar="DIR_OR_FILE", help="replays (.slp files or folders) to encode and evaluate on")
    parser.add_argument("--split", choices=EVAL_SPLITS, help="games to evaluate (default: val for --store, all for --replays)")
    parser.add_argument("--batches", type=int, help="at most this many batches (default: the whole split)")
    parser.add_argument("--workers", type=int, help="loader processes (default: the config's data.num_workers)")
    parser.add_argument("--device", help="torch device (default: the first GPU, else the CPU)")
    parser.add_argument("--rollout", action="store_true", help="also run autoregressive rollouts")
    parser.add_argument("--rollouts", type=int, default=64, help="how many rollouts (default 64)")
    parser.add_argument("--horizon", type=int, default=300, help="frames per rollout (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rollout start points")
    parser.add_argument("--stepping", choices=STEPPINGS, help="rollouts: recurrent state (Mamba-2's default) or a K-frame window per frame")
    parser.add_argument(
        "--own-frames",
        choices=OWN_FRAMES,
        default="all",
        help="rollouts read back the model's whole frame (all, the default), its floats with the replay's ints (floats), "
        "or the replay's frame with the players' x and y the model's (positions): where the drift comes from",
    )
    parser.add_argument(
        "--stage-floor",
        choices=["on", "off"],
        help="rollouts and baselines: land players falling onto the main platform (default: the checkpoint's model.stage_floor)",
    )
    parser.add_argument("--plot", metavar="PNG", help="write the first rollout's plot here (implies --rollout)")
    parser.add_argument(
        "--html",
        metavar="HTML",
        help="write a page that plays the rollouts here (implies --rollout); without --checkpoint, the replays' games",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    add_storage_option_argument(parser)
    args = parser.parse_args()
    if args.checkpoint is None:
        if not (args.html and args.replays):
            parser.error("--checkpoint is required, except for a replay page (--replays ... --html PAGE)")
        games = write_replay_html(args.replays, args.html)
        print(f"page: {args.html} ({games} games)")
        return 0
    evaluation = evaluate_checkpoint(
        args.checkpoint,
        args.store,
        args.replays or (),
        split=args.split,
        max_batches=args.batches,
        rollouts=args.rollouts if args.rollout or args.plot or args.html else 0,
        horizon=args.horizon,
        seed=args.seed,
        device=args.device,
        num_workers=args.workers,
        plot=args.plot,
        html=args.html,
        storage_options=parse_storage_options(args.storage_option),
        stepping=args.stepping,
        stage_floor=None if args.stage_floor is None else args.stage_floor == "on",
        own_frames=args.own_frames,
    )
    if args.json:
        print(json.dumps(evaluation.to_json(), indent=1))
    else:
        print(metrics_table(evaluation))
        if args.plot:
            print(f"plot: {args.plot}")
        if args.html:
            print(f"page: {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("evaluate.py", main))
