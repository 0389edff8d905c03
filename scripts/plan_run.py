"""Plan a training run: the run card's tables computed from a store and a config (over melee_model.plan).

    python scripts/plan_run.py --config experiments/mamba2-v3-65k-ranked.yaml --store data/ranked.zarr --gpus 2
    python scripts/plan_run.py --config ... --store ... --gpus 2 --step-ms 230 --gpu-hour-usd 3.0
    python scripts/plan_run.py --config ... --store ... --step-json bench.json --json

Games, examples, batches and parameters are exact; time and cost need a measured step time per GPU
(--step-ms, or the "step_ms" of benchmarks/train_step.py's JSON).
"""

import argparse
import json
import sys

from melee_encode.errors import run_command
from melee_encode.storage import add_storage_option_argument, parse_storage_options
from melee_model.config import load_config
from melee_model.plan import plan_markdown, plan_run, read_step_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiments/<run>.yaml")
    parser.add_argument("--store", required=True, help="the melee-encode store the run trains on")
    parser.add_argument("--gpus", type=int, default=1, help="training processes (default 1)")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--step-ms", type=float, help="measured ms per batch per GPU")
    step.add_argument("--step-json", metavar="PATH", help='a benchmark\'s JSON output holding "step_ms"')
    parser.add_argument("--gpu-hour-usd", type=float, default=3.0, help="price of one GPU-hour (default 3.0)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of Markdown")
    add_storage_option_argument(parser)
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    step_ms = read_step_ms(args.step_json) if args.step_json else args.step_ms
    options = parse_storage_options(args.storage_option)
    plan = plan_run(config, args.store, gpus=args.gpus, step_ms=step_ms, gpu_hour_usd=args.gpu_hour_usd, storage_options=options)
    print(json.dumps(plan, indent=1) if args.json else plan_markdown(plan, config))
    return 0


if __name__ == "__main__":
    sys.exit(run_command("plan_run.py", main))
