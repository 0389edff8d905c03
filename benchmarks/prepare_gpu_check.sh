#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what benchmarks/gpu_check.sh carries to the GPU machine, which has
# no package registry: .whl/ (Python 3.12 wheels of zarr, numcodecs, peppi-py and their small deps,
# and mamba-ssm built as a pure-Python wheel: its Triton kernels need no CUDA compilation) and
# .gpu/store.zarr (the shared replays, encoded here). Both folders are git-ignored.
#
#   benchmarks/prepare_gpu_check.sh [--out DIR] [--python PYTHON]
#     --out DIR        write DIR/.whl and DIR/.gpu (default: the repo root, where gpu_check.sh reads them)
#     --python PYTHON  an interpreter with this project and torch installed (default: .venv, set up
#                      by scripts/setup_env.sh); mamba-ssm's build imports torch from it
set -euo pipefail
cd "$(dirname "$0")/.."
out=. python=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        *) echo "prepare_gpu_check.sh: error: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$python" ]; then
    scripts/setup_env.sh
    python=.venv/bin/python
fi
PIP="$python -m pip"
mkdir -p "$out"
rm -rf "$out/.whl" "$out/.gpu/store.zarr" && mkdir -p "$out/.whl" "$out/.gpu"
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$out/.whl" zarr==3.4.2 numcodecs==0.17.1 donfig==0.8.1.post1 google-crc32c==1.9.0 msgspec==0.22.0 peppi-py==0.8.6
# PyPI has only mamba-ssm's sdist. Its setup.py runs for the metadata as well as for the build, and
# without these two variables it looks for CUDA, then tries to download a prebuilt wheel, and fails
# on a machine that has neither: with them it builds a pure-Python wheel (the Triton kernels). No
# cache, so the build really runs each time (a wheel cached by an earlier build would hide a break).
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $PIP wheel --quiet --no-cache-dir --no-deps --no-build-isolation \
    --no-binary mamba-ssm -w "$out/.whl" mamba-ssm==2.3.2.post1
"$python" -m melee_encode.cli encode ../shared/replays -o "$out/.gpu/store.zarr" --quiet
du -sh "$out/.whl" "$out/.gpu"
