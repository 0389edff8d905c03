#!/usr/bin/env bash
# Sets up .venv and, where it can, the browser for the viewer's test; then runs the test suite on the
# real replays in ../shared/replays.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
scripts/setup_browser.sh
exec .venv/bin/python -m pytest "$@"
