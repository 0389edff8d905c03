"""Tests for melee_model.ssd: the chunked scan against the sequential one, states in and out, one step by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from numerics import TOL, rel_err

from melee_model.ssd import ssd_chunked, ssd_sequential, ssd_step


def scan_inputs(batch=2, seqlen=11, heads=3, headdim=4, d_state=5, seed=0):
    """Random (x, dt, A, B, C) in float32 with the conventions of the scan functions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seqlen, heads, headdim, generator=g)
    dt = F.softplus(torch.randn(batch, seqlen, heads, generator=g) - 1)  # positive, ~0.1-1
    A = -(0.5 + 3 * torch.rand(heads, generator=g))
    B = torch.randn(batch, seqlen, d_state, generator=g)
    C = torch.randn(batch, seqlen, d_state, generator=g)
    return x, dt, A, B, C


def random_state(batch=2, heads=3, headdim=4, d_state=5, seed=2):
    return torch.randn(batch, heads, headdim, d_state, generator=torch.Generator().manual_seed(seed))


def test_one_head_by_hand():
    # h = p = n = 1, A = -1. Frame 1: x 2, dt 0.5, B 3, C 4 -> state 0.5*2*3 = 3, y 4*3 = 12.
    # Frame 2: x 1, dt 2, B -1, C 0.5 -> state exp(-2)*3 + 2*1*(-1), y 0.5 * state.
    x = torch.tensor([2.0, 1.0], dtype=torch.float64).view(1, 2, 1, 1)
    dt = torch.tensor([0.5, 2.0], dtype=torch.float64).view(1, 2, 1)
    A = torch.tensor([-1.0], dtype=torch.float64)
    B = torch.tensor([3.0, -1.0], dtype=torch.float64).view(1, 2, 1)
    C = torch.tensor([4.0, 0.5], dtype=torch.float64).view(1, 2, 1)
    state_2 = 3 * math.exp(-2) - 2
    expected_y = torch.tensor([12.0, 0.5 * state_2], dtype=torch.float64).view(1, 2, 1, 1)

    y1, state = ssd_step(torch.zeros(1, 1, 1, 1, dtype=torch.float64), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    assert y1.item() == 12.0 and state.item() == 3.0
    y2, state = ssd_step(state, x[:, 1], dt[:, 1], A, B[:, 1], C[:, 1])
    assert y2.item() == pytest.approx(0.5 * state_2, rel=1e-15) and state.item() == pytest.approx(state_2, rel=1e-15)
    for chunk_size in (1, 2):
        y, final = ssd_chunked(x, dt, A, B, C, chunk_size, return_final_state=True)
        torch.testing.assert_close(y, expected_y, rtol=1e-14, atol=0)
        assert final.item() == pytest.approx(state_2, rel=1e-14)


def test_step_leaves_its_state_alone():
    x, dt, A, B, C = scan_inputs(seqlen=1)
    state = random_state()
    before = state.clone()
    ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    assert torch.equal(state, before)


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


@pytest.mark.parametrize("seqlen", [1, 7, 10, 11, 64])
@pytest.mark.parametrize("chunk_size", [1, 3, 10, 16, 256])
def test_states_in_and_out_match_sequential(chunk_size, seqlen):
    inputs, initial = scan_inputs(seqlen=seqlen), random_state()
    expected_y, expected_state = ssd_sequential(*(t.double() for t in inputs), initial_state=initial.double(), return_final_state=True)
    y, state = ssd_chunked(*inputs, chunk_size=chunk_size, initial_state=initial, return_final_state=True)
    assert state.shape == (2, 3, 4, 5) and state.dtype == torch.float32
    assert rel_err(y, expected_y) < TOL[torch.float32]
    assert rel_err(state, expected_state) < TOL[torch.float32]


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 256])
def test_split_scan_equals_whole_scan(chunk_size):
    # A sequence scanned in two pieces, the state passed between them, equals one scan of it all.
    x, dt, A, B, C = scan_inputs(seqlen=37)
    whole, whole_state = ssd_chunked(x, dt, A, B, C, chunk_size, return_final_state=True)
    k = 13
    first, state = ssd_chunked(x[:, :k], dt[:, :k], A, B[:, :k], C[:, :k], chunk_size, return_final_state=True)
    second, state = ssd_chunked(x[:, k:], dt[:, k:], A, B[:, k:], C[:, k:], chunk_size, initial_state=state, return_final_state=True)
    assert rel_err(torch.cat([first, second], dim=1), whole) < 1e-5
    assert rel_err(state, whole_state) < 1e-5


@pytest.mark.parametrize("with_states", [False, True])
@pytest.mark.parametrize("chunk_size, seqlen", [(1, 7), (3, 11), (10, 64), (16, 64), (256, 10)])
def test_ssd_chunked_gradients_match_sequential(chunk_size, seqlen, with_states):
    # with_states: a random initial state in, and the final state in the loss as well as y.
    inputs = (*scan_inputs(seqlen=seqlen), random_state() if with_states else None)
    g = torch.Generator().manual_seed(1)
    weight, state_weight = torch.randn(inputs[0].shape, generator=g), torch.randn(2, 3, 4, 5, generator=g)

    def grads(scan, dtype, **kwargs):
        leaves = [None if t is None else t.to(dtype).requires_grad_() for t in inputs]
        out = scan(*leaves[:5], initial_state=leaves[5], return_final_state=with_states, **kwargs)
        y, state = out if with_states else (out, None)
        loss = (y * weight.to(dtype)).sum()
        if with_states:
            loss = loss + (state * state_weight.to(dtype)).sum()
        loss.backward()
        return [t.grad for t in leaves if t is not None]

    expected = grads(ssd_sequential, torch.float64)
    actual = grads(ssd_chunked, torch.float32, chunk_size=chunk_size)
    for name, a, e in zip("x dt A B C initial_state".split(), actual, expected):
        assert rel_err(a, e) < TOL[torch.float32], name


def test_ssd_chunked_under_autocast_accumulates_in_float32():
    inputs = scan_inputs(seqlen=64)
    expected = ssd_sequential(*(t.double() for t in inputs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = ssd_chunked(*inputs, chunk_size=16)
    assert actual.dtype == torch.float32
    assert rel_err(actual, expected) < TOL[torch.float32]
