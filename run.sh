#!/usr/bin/env bash
# The main job, end to end, on a folder of replays (default ../shared/replays):
#   set up .venv -> encode into data/replays.zarr -> show it -> plan the run -> train the tiny config
#   (2 CPU ranks, or the GPUs) -> evaluate the best checkpoint with rollouts and a plot.
# Usage: ./run.sh [REPLAY_DIR]
set -euo pipefail
cd "$(dirname "$0")"
REPLAYS=${1:-../shared/replays}
if [ ! -d "$REPLAYS" ]; then
    echo "usage: ./run.sh REPLAY_DIR  (no replay folder at $REPLAYS)" >&2
    exit 2
fi
scripts/setup_env.sh
PY=.venv/bin/python
STORE=data/replays.zarr
RUN=runs/demo-tiny
CONFIG=experiments/tiny.yaml
export WANDB_MODE=${WANDB_MODE:-offline}

echo "== encode $REPLAYS -> $STORE"
.venv/bin/melee-encode encode "$REPLAYS" -o "$STORE" --workers "$(nproc)"
.venv/bin/melee-encode info "$STORE"

echo "== plan"
$PY scripts/plan_run.py --config "$CONFIG" --store "$STORE"

echo "== train $CONFIG -> $RUN"
rm -rf "$RUN"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/accelerate launch scripts/train.py --config "$CONFIG" --store "$STORE" --output-dir "$RUN"
else
    ACCELERATE_USE_CPU=1 $PY -m torch.distributed.run --nproc_per_node 2 scripts/train.py --config "$CONFIG" --store "$STORE" --output-dir "$RUN"
fi

echo "== evaluate $RUN/best"
$PY scripts/evaluate.py --checkpoint "$RUN/best" --store "$STORE" --rollout --rollouts 64 --horizon 300 --plot "$RUN/rollout.png"
echo "rollout plot: $RUN/rollout.png; metrics: $RUN/metrics.jsonl"
