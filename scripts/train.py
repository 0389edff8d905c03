"""Train a world model on a melee-encode store (thin entry point over melee_model.train).

accelerate launch scripts/train.py --config experiments/tiny.yaml --store data/replays.zarr
ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 scripts/train.py --config experiments/tiny.yaml --store data/replays.zarr
accelerate launch scripts/train.py --config ... --store ... --resume runs/tiny/latest
accelerate launch scripts/train.py --config ... --store s3://bucket/ranked.zarr [--storage-option endpoint_url=...]
... --set train.lr=1e-3 --set data.batch_size=2048      (override any config value)
"""

import argparse
import sys

from melee_encode.errors import run_command
from melee_encode.storage import add_storage_option_argument, parse_storage_options
from melee_model.config import load_config
from melee_model.train import Trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiments/<run>.yaml")
    parser.add_argument("--store", required=True, help="the melee-encode store to train on")
    parser.add_argument("--output-dir", help="where checkpoints and metrics go (default runs/<config name>)")
    parser.add_argument("--resume", help="a checkpoint to continue from exactly, e.g. runs/<name>/latest")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    add_storage_option_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    options = parse_storage_options(args.storage_option)
    trainer = Trainer(
        config, args.store, output_dir=args.output_dir, resume=args.resume, progress_bar=not args.no_progress, storage_options=options
    )
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(run_command("train.py", main))
