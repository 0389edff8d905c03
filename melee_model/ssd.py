"""The SSD scan of Mamba-2 in plain PyTorch: chunked (fast), sequential and one step (references).

The recurrence, per head, with a (p, n) state h:

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t.

`ssd_chunked` evaluates it block by block (Mamba-2 paper, Listing 1) and backs the Mamba2 layer's
"torch" backend; `ssd_sequential` walks it one frame at a time with `ssd_step`, which is also the
layer's recurrent inference step. All three can start from a given state and return the final one,
like mamba-ssm's `mamba_chunk_scan_combined(initial_states=..., return_final_states=True)` and
`selective_state_update`. Every scan runs in at least float32 with autocast off.

Shape letters: b batch, l sequence length, h heads, p head dim, n state size,
c chunks, q / s positions inside a chunk (output / input side).
"""

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange


def _no_autocast(device: torch.device):
    """Context that turns autocast off on `device`, so the scan is not silently run in bf16."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _scan_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: at least float32, float64 when the inputs are float64."""
    return torch.promote_types(x.dtype, torch.float32)


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Stable segment sum: out[..., i, j] = sum(a[..., j+1 : i+1]) for j <= i, -inf above the diagonal.

    a: (..., T) -> (..., T, T). Summing masked copies instead of differencing one cumsum avoids
    the cancellation error of cumsum[i] - cumsum[j] on long chunks.
    """
    T = a.size(-1)
    a = a[..., None].expand(*a.shape, T)  # (..., T, T): a[..., i, j] = a_i
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~strict, 0)
    out = torch.cumsum(a, dim=-2)  # (..., T, T)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return out.masked_fill(~causal, -torch.inf)


def ssd_step(state, x, dt, A, B, C):
    """One step of the recurrence; the plain twin of mamba-ssm's `selective_state_update`.

    state: (b, h, p, n); x: (b, h, p); dt: (b, h), already softplus-ed; A: (h,), negative;
    B, C: (b, n). Returns (y (b, h, p) in x.dtype, new state (b, h, p, n) in the scan dtype).
    `state` is not modified.
    """
    out_dtype, dtype = x.dtype, _scan_dtype(x)
    with _no_autocast(x.device):
        state, x, dt, A, B, C = (t.to(dtype) for t in (state, x, dt, A, B, C))
        decay = torch.exp(dt * A)  # (b, h)
        inp = torch.einsum("bh,bhp,bn->bhpn", dt, x, B)  # (b, h, p, n)
        state = state * decay[..., None, None] + inp  # (b, h, p, n)
        y = torch.einsum("bhpn,bn->bhp", state, C)  # (b, h, p)
    return y.to(out_dtype), state


def ssd_sequential(x, dt, A, B, C, initial_state=None, return_final_state=False):
    """Reference SSD scan, one `ssd_step` per frame.

    x: (b, l, h, p); dt: (b, l, h), already softplus-ed; A: (h,), negative; B, C: (b, l, n);
    initial_state: (b, h, p, n) or None (zeros).
    Returns y: (b, l, h, p) in x.dtype, and with return_final_state also the state after the last
    frame, (b, h, p, n) in the scan dtype (>= float32).
    """
    b, l, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1], dtype=_scan_dtype(x)) if initial_state is None else initial_state
    ys = []
    for t in range(l):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])  # (b, h, p), (b, h, p, n)
        ys.append(y)
    y = torch.stack(ys, dim=1)  # (b, l, h, p)
    return (y, state) if return_final_state else y


def ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=None, return_final_state=False):
    """Chunked SSD scan (Mamba-2 paper, Listing 1): same result as `ssd_sequential`.

    Within a chunk the scan is a masked quadratic form (attention-like); across chunks only the
    (h, p, n) state is passed, so cost is linear in l. Vectorised over batch, heads and chunks.

    x: (b, l, h, p); dt: (b, l, h), already softplus-ed; A: (h,), negative; B, C: (b, l, n);
    chunk_size: block length (any l works: the tail is zero-padded, dt=0 steps are no-ops);
    initial_state: (b, h, p, n) or None (zeros).
    Returns y: (b, l, h, p) in x.dtype, and with return_final_state also the state after the last
    frame, (b, h, p, n) in the scan dtype (>= float32). Accumulated in at least float32, autocast off.
    """
    out_dtype = x.dtype
    seqlen = x.shape[1]
    # Chunking is exact for any block length, so never pad a short sequence up to chunk_size.
    q = min(chunk_size, seqlen)
    pad = -seqlen % q
    with _no_autocast(x.device):
        dtype = _scan_dtype(x)
        x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
        x = F.pad(x * dt[..., None], (0, 0, 0, 0, 0, pad))  # (b, l', h, p): input scaled by dt
        dA = F.pad(dt * A, (0, 0, 0, pad))  # (b, l', h)
        B, C = (F.pad(t, (0, 0, 0, pad)) for t in (B, C))  # (b, l', n)

        x = rearrange(x, "b (c q) h p -> b c q h p", q=q)
        B = rearrange(B, "b (c q) n -> b c q n", q=q)
        C = rearrange(C, "b (c q) n -> b c q n", q=q)
        dA = rearrange(dA, "b (c q) h -> b h c q", q=q)

        # 1. Intra-chunk output: decay-masked C B^T applied to the chunk's own inputs.
        decay = torch.exp(segsum(dA))  # (b, h, c, q, s)
        scores = torch.einsum("bcqn,bcsn->bcqs", C, B)[:, None] * decay  # (b, h, c, q, s)
        y_diag = torch.einsum("bhcqs,bcshp->bcqhp", scores, x)  # (b, c, q, h, p)

        # A single chunk with no state in or out (the card's 10-frame context) needs no more.
        if x.shape[1] == 1 and initial_state is None and not return_final_state:
            y = rearrange(y_diag, "b c q h p -> b (c q) h p")[:, :seqlen]
            return y.to(out_dtype)

        dA_cum = torch.cumsum(dA, dim=-1)  # (b, h, c, q)
        # 2. State each chunk leaves behind, from its own inputs only.
        decay_to_end = torch.exp(dA_cum[..., -1:] - dA_cum)  # (b, h, c, q)
        states = torch.einsum("bcqn,bhcq,bcqhp->bchpn", B, decay_to_end, x)  # (b, c, h, p, n)

        # 3. Pass states across chunks: state entering chunk z = decayed sum of earlier chunks and
        # of the initial state; the extra last row is the state after the whole sequence.
        if initial_state is None:
            states = F.pad(states, (0, 0, 0, 0, 0, 0, 1, 0))  # (b, c+1, h, p, n)
        else:
            states = torch.cat([initial_state.to(dtype)[:, None], states], dim=1)  # (b, c+1, h, p, n)
        chunk_decay = torch.exp(segsum(F.pad(dA_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
        states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)  # (b, c+1, h, p, n)
        entering, final_state = states[:, :-1], states[:, -1]  # (b, c, h, p, n), (b, h, p, n)

        # 4. Inter-chunk output: read the incoming state, decayed to each position.
        y_off = torch.einsum("bcqn,bchpn,bhcq->bcqhp", C, entering, torch.exp(dA_cum))  # (b, c, q, h, p)

        y = rearrange(y_diag + y_off, "b c q h p -> b (c q) h p")[:, :seqlen]  # (b, l, h, p)
    y = y.to(out_dtype)
    return (y, final_state) if return_final_state else y
