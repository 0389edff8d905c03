#!/usr/bin/env bash
# The main job, end to end: set up .venv, encode a replay folder into data/replays.zarr, show it.
# Usage: ./run.sh [REPLAY_DIR]   (default: ../shared/replays)
set -euo pipefail
cd "$(dirname "$0")"
REPLAYS=${1:-../shared/replays}
if [ ! -d "$REPLAYS" ]; then
    echo "usage: ./run.sh REPLAY_DIR  (no replay folder at $REPLAYS)" >&2
    exit 2
fi
scripts/setup_env.sh
STORE=data/replays.zarr
.venv/bin/melee-encode encode "$REPLAYS" -o "$STORE" --workers "$(nproc)"
.venv/bin/melee-encode info "$STORE"
