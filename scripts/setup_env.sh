#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its training, test, 7z and dask extras. Sourced by
# run.sh and run_tests.sh; safe to run again: it reinstalls only when setup.cfg or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.melee-installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # torch first, pinned (pyproject.toml, [tool.melee-encode]): on the project's machines this is the
    # CPU build on local disk; a bare "torch" requirement would pull a multi-GB CUDA build.
    torch_version=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["melee-encode"]["torch"])')
    .venv/bin/python -m pip install --quiet "torch==$torch_version"
    .venv/bin/python -m pip install --quiet -e ".[train,test,7z,dask]"
    echo "$want" > "$stamp"
fi
