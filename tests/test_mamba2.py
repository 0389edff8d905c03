"""Tests for melee_model.mamba2: layout parity with mamba-ssm, scan correctness, backends."""

import math

import pytest
import torch
import torch.nn.functional as F

from melee_model.mamba2 import Mamba2, mamba_ssm_available, ssd_chunked, ssd_sequential

# Relative error (max abs diff / max abs reference) allowed for each compute dtype.
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# The Triton kernel sums in another order (and uses TF32 dots), so backend parity is looser.
CUDA_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def scan_inputs(batch=2, seqlen=11, heads=3, headdim=4, d_state=5, seed=0):
    """Random (x, dt, A, B, C) in float32 with the conventions of the scan functions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seqlen, heads, headdim, generator=g)
    dt = F.softplus(torch.randn(batch, seqlen, heads, generator=g) - 1)  # positive, ~0.1-1
    A = -(0.5 + 3 * torch.rand(heads, generator=g))
    B = torch.randn(batch, seqlen, d_state, generator=g)
    C = torch.randn(batch, seqlen, d_state, generator=g)
    return x, dt, A, B, C


def small_mamba(**kwargs) -> Mamba2:
    torch.manual_seed(0)
    kwargs = {"d_state": 16, "headdim": 16, "chunk_size": 10, **kwargs}
    return Mamba2(32, **kwargs)


def reference_forward(m: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """The layer spelled out op by op in float64 on top of `ssd_sequential`."""
    w = {k: v.double() for k, v in m.state_dict().items()}
    u = u.double()
    b, l, _ = u.shape
    di, n, h = m.d_inner, m.d_state, m.nheads
    zxbcdt = u @ w["in_proj.weight"].T
    z, xBC, dt = zxbcdt[..., :di], zxbcdt[..., di : 2 * di + 2 * n], zxbcdt[..., 2 * di + 2 * n :]
    kernel = w["conv1d.weight"][:, 0]  # (conv_dim, d_conv)
    padded = F.pad(xBC, (0, 0, m.d_conv - 1, 0))
    xBC = sum(padded[:, j : j + l] * kernel[:, j] for j in range(m.d_conv)) + w["conv1d.bias"]
    xBC = F.silu(xBC)
    x = xBC[..., :di].reshape(b, l, h, m.headdim)
    B, C = xBC[..., di : di + n], xBC[..., di + n :]
    dt = F.softplus(dt + w["dt_bias"])
    y = ssd_sequential(x, dt, -torch.exp(w["A_log"]), B, C) + x * w["D"][:, None]
    y = y.reshape(b, l, di) * F.silu(z)
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + 1e-5) * w["norm.weight"]
    return y @ w["out_proj.weight"].T


# ---------------------------------------------------------------- layout and init


def test_parameter_names_and_shapes():
    m = Mamba2(32, d_state=16, d_conv=4, expand=2, headdim=16)
    d_inner, nheads, conv_dim = 64, 4, 64 + 32
    expected = {
        "in_proj.weight": (2 * d_inner + 2 * 16 + nheads, 32),
        "conv1d.weight": (conv_dim, 1, 4),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (32, d_inner),
    }
    assert {k: tuple(v.shape) for k, v in m.named_parameters()} == expected
    assert set(m.state_dict()) == set(expected)
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.dt_bias, m.A_log, m.D))


def test_parameter_count_matches_mamba_ssm():
    m = Mamba2(384, d_state=64, headdim=64, chunk_size=10)
    count = lambda mod: sum(p.numel() for p in mod.parameters(recurse=True))
    assert count(m.in_proj) == 643_584
    assert count(m.conv1d) == 4_480
    assert m.dt_bias.numel() + m.A_log.numel() + m.D.numel() == 36
    assert count(m.norm) == 768
    assert count(m.out_proj) == 294_912
    assert count(m) == 943_780


def test_init_ranges():
    m = Mamba2(256, d_state=16, headdim=8)  # 64 heads: enough draws to probe the ranges
    assert (m.A_log >= 0).all() and (m.A_log <= math.log(16) + 1e-6).all()
    dt = F.softplus(m.dt_bias)
    assert (dt >= 1e-3 * (1 - 1e-4)).all() and (dt <= 0.1 * (1 + 1e-4)).all()
    assert torch.equal(m.D, torch.ones_like(m.D))
    assert torch.equal(m.norm.weight, torch.ones_like(m.norm.weight))


def test_bad_backend_name_rejected():
    with pytest.raises(ValueError):
        Mamba2(32, headdim=16, backend="triton")


# ---------------------------------------------------------------- scan correctness


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seqlen", [1, 7, 10, 11, 64])
@pytest.mark.parametrize("chunk_size", [1, 3, 10, 16, 256])
def test_ssd_chunked_matches_sequential(chunk_size, seqlen, dtype):
    # Round the inputs to `dtype` first so the float64 reference sees exactly what the scan sees.
    inputs = [t.to(dtype) for t in scan_inputs(seqlen=seqlen)]
    expected = ssd_sequential(*(t.double() for t in inputs))
    actual = ssd_chunked(*inputs, chunk_size=chunk_size)
    assert actual.shape == expected.shape and actual.dtype == dtype
    assert rel_err(actual, expected) < TOL[dtype]


@pytest.mark.parametrize("chunk_size, seqlen", [(1, 7), (3, 11), (10, 64), (16, 64), (256, 10)])
def test_ssd_chunked_gradients_match_sequential(chunk_size, seqlen):
    inputs = scan_inputs(seqlen=seqlen)
    weight = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))

    def grads(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in inputs]
        (fn(*leaves) * weight.to(dtype)).sum().backward()
        return [t.grad for t in leaves]

    expected = grads(ssd_sequential, torch.float64)
    actual = grads(lambda *t: ssd_chunked(*t, chunk_size=chunk_size), torch.float32)
    for name, a, e in zip("x dt A B C".split(), actual, expected):
        assert rel_err(a, e) < TOL[torch.float32], name


def test_ssd_chunked_under_autocast_accumulates_in_float32():
    inputs = scan_inputs(seqlen=64)
    expected = ssd_sequential(*(t.double() for t in inputs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = ssd_chunked(*inputs, chunk_size=16)
    assert actual.dtype == torch.float32
    assert rel_err(actual, expected) < TOL[torch.float32]


# ---------------------------------------------------------------- full layer


def test_forward_shape_and_matches_reference():
    m = small_mamba()
    u = torch.randn(2, 23, 32)
    y = m(u)
    assert y.shape == u.shape and y.dtype == u.dtype
    assert rel_err(y, reference_forward(m, u)) < TOL[torch.float32]


def test_causal():
    m = small_mamba()
    u = torch.randn(2, 25, 32)
    t = 13  # mid-chunk, so both the intra- and inter-chunk paths are exercised
    u2 = u.clone()
    u2[:, t] += torch.randn(2, 32)
    y, y2 = m(u), m(u2)
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(y2[:, t:], y[:, t:])


def test_output_independent_of_chunk_size():
    m = small_mamba()
    u = torch.randn(2, 37, 32)
    outputs = {}
    for chunk_size in (10, 256, 3):
        m.chunk_size = chunk_size
        outputs[chunk_size] = m(u)
    assert rel_err(outputs[256], outputs[10]) < 1e-5
    assert rel_err(outputs[3], outputs[10]) < 1e-5


def test_bf16_autocast_close_to_float32():
    m = small_mamba()
    u = torch.randn(2, 37, 32)
    expected = m(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = m(u)
    assert actual.dtype == torch.bfloat16
    assert rel_err(actual, expected) < TOL[torch.bfloat16]


def test_backward_reaches_every_parameter():
    m = small_mamba()
    m(torch.randn(2, 15, 32)).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_auto_backend_uses_torch_on_cpu():
    u = torch.randn(1, 12, 32)
    auto, plain = small_mamba(backend="auto"), small_mamba(backend="torch")
    assert auto.backend_for(u) == "torch"
    torch.testing.assert_close(auto(u), plain(u), rtol=0, atol=0)


def test_cuda_backend_refuses_cpu_input():
    with pytest.raises(RuntimeError):
        small_mamba(backend="cuda")(torch.randn(1, 4, 32))


# ---------------------------------------------------------------- kernel parity (GPU only)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and mamba_ssm_available()), reason="needs CUDA and mamba-ssm"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backend_matches_torch(dtype):
    torch.manual_seed(0)
    config = dict(d_state=32, headdim=32, chunk_size=64)
    reference = Mamba2(64, backend="torch", **config).cuda()
    fast = Mamba2(64, backend="cuda", **config).cuda()
    fast.load_state_dict(reference.state_dict())
    u = torch.randn(2, 100, 64, device="cuda")  # ragged last chunk
    weight = torch.randn(2, 100, 64, device="cuda")

    results = []
    for m in (reference, fast):
        leaf = u.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = m(leaf)
        (y.float() * weight).sum().backward()
        grads = {"u": leaf.grad, **{k: p.grad for k, p in m.named_parameters()}}
        results.append((y, grads))

    (y_ref, g_ref), (y_fast, g_fast) = results
    assert fast.backend_for(u) == "cuda"
    assert rel_err(y_fast, y_ref) < CUDA_TOL[dtype]
    for name in g_ref:
        assert rel_err(g_fast[name], g_ref[name]) < CUDA_TOL[dtype], name
