"""Tolerances and the error measure shared by the scan and layer tests."""

import torch

# Relative error (max abs diff / max abs reference) allowed for each compute dtype.
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# The recurrent step and the full forward do the same float32 arithmetic in another order.
STEP_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# The Triton kernels sum in another order (and use TF32 dots), so backend parity is looser.
CUDA_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()
