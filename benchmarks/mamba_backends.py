"""Time of one Mamba2 layer with each backend, at the run card's shapes: a training forward+backward
over the context, and one recurrent inference step (a rollout's cost per frame).

    python benchmarks/mamba_backends.py [--batch 4096] [--json]

On a GPU: the pure-PyTorch scans and mamba-ssm's Triton kernels (when importable), in bf16 autocast,
with the same weights, and the largest relative difference between their training outputs. On a
CPU: the pure-PyTorch backend only (float32, a smaller default batch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from melee_model.mamba2 import Mamba2, mamba_ssm_available  # noqa: E402

from _report import emit, time_calls  # noqa: E402


def median_ms(fn, repeats: int, cuda: bool) -> float:
    return 1e3 * statistics.median(time_calls(fn, repeats, torch.cuda.synchronize if cuda else (lambda: None)))


def time_backend(layer: Mamba2, u: torch.Tensor, repeats: int) -> tuple[dict, torch.Tensor]:
    """u: (b, l, d_model). Median ms of forward+backward over u and of one step; the forward's output."""
    cuda = u.is_cuda
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def train():
        with autocast:
            out = layer(u)
        out.float().sum().backward()
        return out

    with torch.no_grad(), autocast:  # the state after the context, where a rollout starts
        _, state = layer(u.detach(), return_state=True)

    @torch.no_grad()
    def step():
        with autocast:
            return layer.step(u[:, -1].detach(), state)

    figures = {"ms": median_ms(train, repeats, cuda), "step_ms": median_ms(step, repeats, cuda)}
    return figures, train().detach().float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=None, help="default 4096 on a GPU, 256 on a CPU")
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (4096 if device.type == "cuda" else 256)
    torch.manual_seed(0)
    u = torch.randn(batch, args.context, 384, device=device, requires_grad=True)
    backends = ["torch"] + (["cuda"] if device.type == "cuda" and mamba_ssm_available() else [])
    figures, outputs = {}, {}
    for backend in backends:
        torch.manual_seed(1)  # the same weights for every backend
        layer = Mamba2(384, d_state=64, headdim=64, chunk_size=10, backend=backend).to(device)
        figures[backend], outputs[backend] = time_backend(layer, u, args.repeats)
    if "cuda" in outputs:
        diff = (outputs["cuda"] - outputs["torch"]).abs().max() / outputs["torch"].abs().max()
        figures["cuda"]["max_rel_diff_vs_torch"] = diff.item()
    figures.update(device=str(torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"), batch=batch)
    shape = f"batch {batch}, d_model 384"
    rows = []
    for name in backends:
        rows.append((f"{name} backend, fwd+bwd", f"{figures[name]['ms']:.2f} ms", f"{shape}, {args.context} frames"))
        rows.append((f"{name} backend, one step", f"{figures[name]['step_ms']:.3f} ms", f"{shape}, no grad"))
    if "cuda" in figures:
        rows.append(("max relative difference (bf16)", f"{figures['cuda']['max_rel_diff_vs_torch']:.2e}", "mamba-ssm vs pure PyTorch"))
    emit(figures, args.json, f"Mamba2 layer on {figures['device']}", rows)


if __name__ == "__main__":
    main()
