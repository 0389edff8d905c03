#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what benchmarks/gpu_check.sh carries to the GPU machine, which has
# no package registry: .whl/ (Python 3.12 wheels of zarr, numcodecs, peppi-py and their small deps,
# and mamba-ssm built as a pure-Python wheel: its Triton kernels need no CUDA compilation) and
# .gpu/store.zarr (the shared replays, encoded here). Both folders are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
PIP=".venv/bin/python -m pip"
rm -rf .whl && mkdir -p .whl .gpu
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl zarr==3.4.2 numcodecs==0.17.1 donfig==0.8.1.post1 google-crc32c==1.9.0 msgspec==0.22.0 peppi-py==0.8.6
tmp=$(mktemp -d)
$PIP download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$tmp" mamba-ssm==2.3.2.post1
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $PIP wheel --quiet --no-build-isolation --no-deps "$tmp"/mamba_ssm-*.tar.gz -w .whl
rm -rf "$tmp" .gpu/store.zarr
.venv/bin/melee-encode encode ../shared/replays -o .gpu/store.zarr --quiet
du -sh .whl .gpu
