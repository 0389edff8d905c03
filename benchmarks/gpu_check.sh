#!/usr/bin/env bash
# Every GPU check in one call, for the lent GPU machine (prepare with benchmarks/prepare_gpu_check.sh):
#   device run: command "bash benchmarks/gpu_check.sh", carry [".whl", ".gpu"], timeout_s 480
# 1. numerics (tests/test_mamba2.py -k cuda): mamba-ssm's Triton SSD vs the pure-PyTorch scan, forward
#    and gradients, fp32 and bf16, on a ragged multi-chunk shape and on the run card's own (chunk 10,
#    10 frames, d_model 384, d_state 64, headdim 64); the recurrent step vs the full forward, both backends
# 2. speed of both Mamba2 backends on the run card's layer (batch 4096, 10 frames, bf16): training
#    forward+backward, and one recurrent step
# 3. the run card's train step at batch 4096 bf16: on a resident batch, and with the data pipeline
#    feeding the GPU from the carried store (data included)
# Prints a short table; the raw figures are left in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
: > /tmp/site/selective_scan_cuda.py  # mamba-ssm imports its compiled extension unguarded; the SSD path never calls it
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pytest tests/test_mamba2.py -q -p no:cacheprovider -k cuda -o junit_family=legacy --junitxml "$OUT/numerics.xml" 2>&1 | tail -15 | tee "$OUT/numerics.txt"
python3 benchmarks/mamba_backends.py --json > "$OUT/backends.json" 2> "$OUT/backends.err" || tail -5 "$OUT/backends.err"
python3 benchmarks/train_step.py --no-cpu --store .gpu/store.zarr --json > "$OUT/train_step.json" 2> "$OUT/train_step.err" || tail -5 "$OUT/train_step.err"
python3 - "$OUT" <<'PY'
import json, pathlib, sys, tomllib
import xml.etree.ElementTree as ET
import torch
out = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return {}
def numerics():
    """One row per GPU test: its outcome and the errors it recorded."""
    try:
        cases = ET.parse(out / "numerics.xml").iter("testcase")
    except (OSError, ET.ParseError):
        return [("numerics", "not run")]
    rows = []
    for case in cases:
        outcome = next((c.tag.upper() for c in case if c.tag in ("failure", "error")), "passed")
        outcome = "skipped" if case.find("skipped") is not None else outcome
        props = {p.get("name"): float(p.get("value")) for p in case.iter("property")}
        errors = ", ".join(f"{k} {v:.1e}" for k, v in props.items())
        rows.append((case.get("name"), f"{outcome}  {errors}".rstrip()))
    return rows
pin = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["tool"]["melee-encode"]["torch"]
backends, step = load("backends.json"), load("train_step.json")
rows = [("GPU", (out / "gpu.txt").read_text().strip()), ("torch", f"{torch.__version__} here, {pin} pinned (pyproject.toml)")]
rows += numerics()
for name in ("torch", "cuda"):
    if name in backends:
        rows.append((f"Mamba2 layer fwd+bwd, {name} backend", f"{backends[name]['ms']:.2f} ms"))
        rows.append((f"Mamba2 layer one step, {name} backend", f"{backends[name]['step_ms']:.3f} ms"))
if "gpu_step_ms" in step:
    rows.append(("train step, batch 4096 bf16, resident batch", f"{step['gpu_step_ms']:.1f} ms"))
    rows.append(("train step with data from the store", f"{step['gpu_step_with_data_ms']:.1f} ms (target < 15 ms)"))
width = max(len(r[0]) for r in rows)
print("\n".join(f"{a:<{width}}  {b}" for a, b in rows))
PY
