#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite on the real replays in ../shared/replays.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
