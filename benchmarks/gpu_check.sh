#!/usr/bin/env bash
# Every GPU check in one call, for the lent GPU machine (prepare with benchmarks/prepare_gpu_check.sh):
#   device run: command "bash benchmarks/gpu_check.sh", carry [".whl", ".gpu"], timeout_s 480
# 1. numerics: mamba-ssm's Triton SSD vs the pure-PyTorch scan, forward and gradients, fp32 and bf16
# 2. speed of both Mamba2 backends on the run card's layer (batch 4096, 10 frames, d_model 384, bf16)
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
python3 -m pytest tests/test_mamba2.py -q -p no:cacheprovider -k "cuda or backend" 2>&1 | tail -15 | tee "$OUT/numerics.txt"
python3 benchmarks/mamba_backends.py --json > "$OUT/backends.json" 2> "$OUT/backends.err" || tail -5 "$OUT/backends.err"
python3 benchmarks/train_step.py --no-cpu --store .gpu/store.zarr --json > "$OUT/train_step.json" 2> "$OUT/train_step.err" || tail -5 "$OUT/train_step.err"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return {}
numerics = (out / "numerics.txt").read_text().strip().splitlines()
backends, step = load("backends.json"), load("train_step.json")
rows = [("GPU", (out / "gpu.txt").read_text().strip()), ("numerics (mamba-ssm vs pure PyTorch)", numerics[-1] if numerics else "not run")]
for name in ("torch", "cuda"):
    if name in backends:
        rows.append((f"Mamba2 layer fwd+bwd, {name} backend", f"{backends[name]['ms']:.2f} ms"))
if "gpu_step_ms" in step:
    rows.append(("train step, batch 4096 bf16, resident batch", f"{step['gpu_step_ms']:.1f} ms"))
    rows.append(("train step with data from the store", f"{step['gpu_step_with_data_ms']:.1f} ms (target < 15 ms)"))
width = max(len(r[0]) for r in rows)
print("\n".join(f"{a:<{width}}  {b}" for a, b in rows))
PY
