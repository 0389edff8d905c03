"""Tests for melee_model.mamba2: layout and init, the conv, the full forward, the recurrent step against the
full forward, backends (the CUDA ones run only with a GPU, and mamba-ssm where named: benchmarks/gpu_check.sh)."""

import math

import pytest
import torch
import torch.nn.functional as F
from numerics import CUDA_TOL, STEP_TOL, TOL, rel_err

from melee_encode.config import EncodingConfig
from melee_model.config import ModelConfig
from melee_model.layout import FrameLayout
from melee_model.mamba2 import Mamba2, Mamba2State, mamba_ssm_available
from melee_model.model import build_model
from melee_model.ssd import ssd_sequential

# The run card's layer: d_model 384, d_state 64, headdim 64 (12 heads), chunk_size 10, 10-frame context.
CARD = dict(d_model=384, d_state=64, headdim=64, chunk_size=10)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and mamba_ssm_available()), reason="needs CUDA and mamba-ssm")


def small_mamba(**kwargs) -> Mamba2:
    torch.manual_seed(0)
    kwargs = {"d_state": 16, "headdim": 16, "chunk_size": 10, **kwargs}
    return Mamba2(32, **kwargs)


def card_mamba(**kwargs) -> Mamba2:
    torch.manual_seed(0)
    return Mamba2(**{**CARD, **kwargs})


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


def prefill_then_step(m: Mamba2, u: torch.Tensor, prefix: int) -> tuple[torch.Tensor, Mamba2State]:
    """u (b, l, d_model): the first `prefix` frames in one forward, the rest one step at a time.

    Returns the outputs (b, l, d_model) and the state after the last frame.
    """
    if prefix:
        y, state = m(u[:, :prefix], return_state=True)
        ys = list(y.unbind(1))
    else:
        ys, state = [], m.initial_state(u.shape[0], u.device)
    for t in range(prefix, u.shape[1]):
        y_t, state = m.step(u[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


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
    m = card_mamba()
    count = lambda mod: sum(p.numel() for p in mod.parameters(recurse=True))
    assert count(m.in_proj) == 643_584
    assert count(m.conv1d) == 4_480
    assert m.dt_bias.numel() + m.A_log.numel() + m.D.numel() == 36
    assert count(m.norm) == 768
    assert count(m.out_proj) == 294_912
    assert count(m) == 943_780


def test_mamba_ssm_init_ranges():
    m = Mamba2(256, d_state=16, headdim=8)  # 64 heads: enough draws to probe the ranges
    assert (m.A_log >= 0).all() and (m.A_log <= math.log(16) + 1e-6).all()
    dt = F.softplus(m.dt_bias)
    assert (dt >= 1e-3 * (1 - 1e-4)).all() and (dt <= 0.1 * (1 + 1e-4)).all()
    assert torch.equal(m.D, torch.ones_like(m.D))
    assert torch.equal(m.norm.weight, torch.ones_like(m.norm.weight))


def test_mamba_ssm_init_is_the_default():
    torch.manual_seed(3)
    default = Mamba2(64, d_state=16, headdim=16).state_dict()
    torch.manual_seed(3)
    explicit = Mamba2(64, d_state=16, headdim=16, ssm_init="mamba_ssm").state_dict()
    assert all(torch.equal(default[k], explicit[k]) for k in default)
    assert ModelConfig().ssm_init == "mamba_ssm"


def test_reference_init_values():
    torch.manual_seed(0)
    m = Mamba2(256, d_state=16, headdim=8, ssm_init="reference")  # 64 heads
    # A = -exp(A_log) = -(1, 2, ..., 64), one value per head.
    assert m.A_log[0].item() == 0.0
    torch.testing.assert_close(torch.exp(m.A_log), torch.arange(1.0, 65.0), rtol=1e-6, atol=0)
    # dt_bias uniform in [-1, 1] (the raw parameter, so dt = softplus(dt_bias) in [0.313, 1.313]).
    assert (m.dt_bias >= -1).all() and (m.dt_bias <= 1).all()
    assert m.dt_bias.min() < -0.5 and m.dt_bias.max() > 0.5
    assert torch.equal(m.D, torch.ones_like(m.D))


def test_model_config_passes_ssm_init_to_every_layer():
    layout = FrameLayout(EncodingConfig().schema())
    small = dict(d_model=32, n_layers=2, d_state=8, headdim=16, backend="torch")
    model = build_model(ModelConfig(ssm_init="reference", **small), layout)
    for mixer in model.mixers:
        torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1.0, 5.0)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="ssm_init must be one of .*'mamba_ssm', 'reference'.* got 'mamba'"):
        build_model(ModelConfig(ssm_init="mamba", **small), layout)


def test_bad_backend_name_rejected():
    with pytest.raises(ValueError, match="backend"):
        Mamba2(32, headdim=16, backend="triton")


# ---------------------------------------------------------------- the conv


@pytest.mark.parametrize("seqlen", [1, 3, 4, 10, 37])
def test_conv_matches_torch_conv1d(seqlen):
    # _conv (a sum of shifted copies) against torch's depthwise conv1d, padded d_conv - 1 on both
    # sides and trimmed to the first l outputs (the causal ones), then SiLU: values and gradients.
    m = small_mamba()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a bias away from its zero-ish init, so the bias gradient means something
        m.conv1d.bias.copy_(torch.randn(m.conv_dim, generator=g))
    xBC = torch.randn(2, seqlen, m.conv_dim, generator=g, requires_grad=True)
    weight = torch.randn(2, seqlen, m.conv_dim, generator=g)
    leaves = (xBC, m.conv1d.weight, m.conv1d.bias)

    ours = m._conv(xBC, None)  # (b, l, conv_dim)
    conv = F.conv1d(xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, groups=m.conv_dim, padding=m.d_conv - 1)
    theirs = F.silu(conv[..., :seqlen]).transpose(1, 2)  # (b, l, conv_dim)
    assert ours.shape == theirs.shape == (2, seqlen, m.conv_dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)

    for name, a, e in zip(
        ("xBC", "weight", "bias"),
        torch.autograd.grad((ours * weight).sum(), leaves),
        torch.autograd.grad((theirs * weight).sum(), leaves),
    ):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=name)


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


# ---------------------------------------------------------------- recurrent inference


def test_initial_state_shapes():
    state = card_mamba().initial_state(3)
    assert state.conv.shape == (3, 384 * 2 + 2 * 64, 4) and state.conv.dtype == torch.float32
    assert state.ssm.shape == (3, 12, 64, 64) and state.ssm.dtype == torch.float32
    assert not state.conv.any() and not state.ssm.any()


@pytest.mark.parametrize("seqlen, prefix", [(1, 0), (4, 0), (12, 0), (10, 1), (10, 3), (23, 10), (37, 11)])
@pytest.mark.parametrize("chunk_size", [1, 3, 10, 16, 256])
def test_prefix_then_steps_equal_full_forward(chunk_size, seqlen, prefix):
    m = small_mamba(chunk_size=chunk_size)
    u = torch.randn(2, seqlen, 32, generator=torch.Generator().manual_seed(seqlen))
    with torch.no_grad():
        full, full_state = m(u, return_state=True)
        stepped, state = prefill_then_step(m, u, prefix)
    assert stepped.shape == full.shape
    assert rel_err(stepped, full) < STEP_TOL[torch.float32]
    assert rel_err(state.ssm, full_state.ssm) < STEP_TOL[torch.float32]
    torch.testing.assert_close(state.conv, full_state.conv, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seqlen, prefix", [(10, 0), (10, 9), (30, 10), (37, 13)])
def test_prefix_then_steps_equal_full_forward_at_the_cards_shape(seqlen, prefix):
    m = card_mamba()
    u = torch.randn(2, seqlen, 384, generator=torch.Generator().manual_seed(seqlen))
    with torch.no_grad():
        stepped, _ = prefill_then_step(m, u, prefix)
        assert rel_err(stepped, m(u)) < STEP_TOL[torch.float32]


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 256])
def test_forward_continues_from_a_state(chunk_size):
    # mamba-ssm's own forward with a cache ignores the state it is given (its issues #641, #739);
    # ours continues from it: two forwards with the state passed equal one forward over both.
    m = small_mamba(chunk_size=chunk_size)
    u = torch.randn(2, 37, 32)
    with torch.no_grad():
        full, full_state = m(u, return_state=True)
        first, state = m(u[:, :2], return_state=True)  # shorter than d_conv: the window keeps zeros
        second, state = m(u[:, 2:15], state=state, return_state=True)
        third = m(u[:, 15:], state=state)
    assert rel_err(torch.cat([first, second, third], dim=1), full) < STEP_TOL[torch.float32]
    assert rel_err(state.ssm, m(u[:, :15], return_state=True)[1].ssm) < STEP_TOL[torch.float32]


def test_step_and_forward_leave_the_given_state_alone():
    m = small_mamba()
    u = torch.randn(2, 12, 32)
    _, state = m(u[:, :5], return_state=True)
    before = Mamba2State(state.conv.clone(), state.ssm.clone())
    m.step(u[:, 5], state)
    m(u[:, 5:], state=state)
    assert torch.equal(state.conv, before.conv) and torch.equal(state.ssm, before.ssm)


def test_step_gradients_equal_full_forward_gradients():
    m = small_mamba()
    u = torch.randn(2, 14, 32)
    weight = torch.randn(2, 14, 32)

    def grads(run):
        m.zero_grad()
        leaf = u.clone().requires_grad_()
        (run(leaf) * weight).sum().backward()
        return {"u": leaf.grad, **{k: p.grad.clone() for k, p in m.named_parameters()}}

    expected = grads(m)
    actual = grads(lambda x: prefill_then_step(m, x, prefix=4)[0])
    for name in expected:
        assert rel_err(actual[name], expected[name]) < STEP_TOL[torch.float32] * 10, name


def test_step_under_bf16_autocast_close_to_full_forward():
    m = small_mamba()
    u = torch.randn(2, 23, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = m(u)
        stepped, _ = prefill_then_step(m, u, prefix=7)
    assert stepped.dtype == torch.bfloat16
    assert rel_err(stepped, full) < STEP_TOL[torch.bfloat16]


# ---------------------------------------------------------------- backends


def test_auto_backend_uses_torch_on_cpu():
    u = torch.randn(1, 12, 32)
    auto, plain = small_mamba(backend="auto"), small_mamba(backend="torch")
    assert auto.backend_for(u) == "torch"
    torch.testing.assert_close(auto(u), plain(u), rtol=0, atol=0)


def test_cuda_backend_refuses_cpu_input():
    m = small_mamba(backend="cuda")
    with pytest.raises(RuntimeError):
        m(torch.randn(1, 4, 32))
    with pytest.raises(RuntimeError):
        m.step(torch.randn(1, 32), m.initial_state(1))


# ---------------------------------------------------------------- GPU only (benchmarks/gpu_check.sh)

# (layer, sequence length): a ragged multi-chunk case, and the run card's own shape (one chunk).
PARITY_SHAPES = {"ragged": (dict(d_model=64, d_state=32, headdim=32, chunk_size=64), 100), "card": (CARD, 10)}


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", PARITY_SHAPES)
def test_cuda_backend_matches_torch(shape, dtype, record_property):
    config, seqlen = PARITY_SHAPES[shape]
    torch.manual_seed(0)
    reference = Mamba2(backend="torch", **config).cuda()
    fast = Mamba2(backend="cuda", **config).cuda()
    fast.load_state_dict(reference.state_dict())
    d_model = config["d_model"]
    u = torch.randn(2, seqlen, d_model, device="cuda")
    weight = torch.randn(2, seqlen, d_model, device="cuda")

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
    errors = {name: rel_err(g_fast[name], g_ref[name]) for name in g_ref}
    record_property("rel_err_y", rel_err(y_fast, y_ref))
    record_property("max_rel_err_grad", max(errors.values()))
    assert rel_err(y_fast, y_ref) < CUDA_TOL[dtype]
    for name, error in errors.items():
        assert error < CUDA_TOL[dtype], name


@needs_cuda
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_step_matches_forward_on_cuda(backend, record_property):
    # The card's layer: 10 frames in one forward, then 20 steps; and the same 20 frames as one forward
    # continuing from the state (mamba-ssm: mamba_chunk_scan_combined's initial_states).
    if backend == "cuda" and not mamba_ssm_available():
        pytest.skip("needs mamba-ssm")
    m = card_mamba(backend=backend).cuda()
    u = torch.randn(4, 30, 384, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        full = m(u)
        stepped, _ = prefill_then_step(m, u, prefix=10)
        first, state = m(u[:, :10], return_state=True)
        continued = torch.cat([first, m(u[:, 10:], state=state)], dim=1)
    # The Triton scan's TF32 dots set the cuda backend's tolerance; the torch one is exact float32.
    tolerance = CUDA_TOL[torch.float32] if backend == "cuda" else STEP_TOL[torch.float32]
    record_property("rel_err_step", rel_err(stepped, full))
    record_property("rel_err_continued", rel_err(continued, full))
    assert rel_err(stepped, full) < tolerance
    assert rel_err(continued, full) < tolerance
