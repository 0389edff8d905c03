"""Mamba-2 mixer layer with a pure-PyTorch SSD scan and an optional mamba-ssm kernel backend.

This module owns `Mamba2`, a twin of mamba-ssm 2.3.x `mamba_ssm.modules.mamba2.Mamba2` restricted
to ngroups=1 and no inference cache. Parameter names, shapes, init and checkpoint layout match
mamba-ssm, so a state dict moves between the two unchanged. It also owns the scans behind it:
`ssd_chunked` (the block-decomposed SSD of the Mamba-2 paper, used by the torch backend) and
`ssd_sequential` (the plain recurrence, kept as the reference the tests compare against).

Backend rule, decided on every forward call:
- "torch": chunked SSD in plain PyTorch; runs on CPU, MPS and CUDA, scan accumulates in float32.
- "cuda":  mamba-ssm's Triton `mamba_chunk_scan_combined` (+ `causal_conv1d` when installed);
           raises if the input is not on CUDA or the kernels cannot be imported.
- "auto":  "cuda" when the input is on a CUDA device and the kernels import, else "torch".

Shape letters: b batch, l sequence length, h heads, p head dim, n state size,
c chunks, q / s positions inside a chunk (output / input side).
"""

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

BACKENDS = ("auto", "torch", "cuda")

# None until the first lookup, then False or (mamba_chunk_scan_combined, causal_conv1d_fn or None).
_kernels = None


def _load_kernels():
    """Import mamba-ssm's scan (and causal-conv1d if present) once; cache the outcome."""
    global _kernels
    if _kernels is None:
        try:
            # Importing the submodule still runs mamba_ssm/__init__, which fails without the
            # compiled extension; both failure modes mean "no kernels", not a crash.
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        except (ImportError, OSError):
            _kernels = False
        else:
            try:
                from causal_conv1d import causal_conv1d_fn
            except (ImportError, OSError):
                causal_conv1d_fn = None
            _kernels = (mamba_chunk_scan_combined, causal_conv1d_fn)
    return _kernels


def mamba_ssm_available() -> bool:
    """True when mamba-ssm's Triton SSD kernel can be imported (says nothing about a GPU)."""
    return bool(_load_kernels())


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


def ssd_sequential(x, dt, A, B, C):
    """Reference SSD scan, one time step at a time.

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t.

    x: (b, l, h, p); dt: (b, l, h), already softplus-ed; A: (h,), negative; B, C: (b, l, n).
    Returns y: (b, l, h, p) in x.dtype; computed like `ssd_chunked` (>= float32, autocast off).
    """
    out_dtype, dtype = x.dtype, _scan_dtype(x)
    with _no_autocast(x.device):
        x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
        b, l, h, p = x.shape
        state = x.new_zeros(b, h, p, B.shape[-1])  # (b, h, p, n)
        ys = []
        for t in range(l):
            decay = torch.exp(dt[:, t] * A)  # (b, h)
            inp = torch.einsum("bh,bhp,bn->bhpn", dt[:, t], x[:, t], B[:, t])  # (b, h, p, n)
            state = state * decay[..., None, None] + inp
            ys.append(torch.einsum("bhpn,bn->bhp", state, C[:, t]))  # (b, h, p)
        y = torch.stack(ys, dim=1)  # (b, l, h, p)
    return y.to(out_dtype)


def ssd_chunked(x, dt, A, B, C, chunk_size):
    """Chunked SSD scan (Mamba-2 paper, Listing 1): same result as `ssd_sequential`.

    Within a chunk the scan is a masked quadratic form (attention-like); across chunks only the
    (h, p, n) state is passed, so cost is linear in l. Vectorised over batch, heads and chunks.

    x: (b, l, h, p); dt: (b, l, h), already softplus-ed; A: (h,), negative; B, C: (b, l, n);
    chunk_size: block length (any l works: the tail is zero-padded, dt=0 steps are no-ops).
    Returns y: (b, l, h, p) in x.dtype; accumulated in at least float32, with autocast disabled.
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

        if x.shape[1] == 1:  # a single chunk (the usual 10-frame context): no state enters it
            y = rearrange(y_diag, "b c q h p -> b (c q) h p")[:, :seqlen]
            return y.to(out_dtype)

        dA_cum = torch.cumsum(dA, dim=-1)  # (b, h, c, q)
        # 2. State each chunk leaves behind, from its own inputs only.
        decay_to_end = torch.exp(dA_cum[..., -1:] - dA_cum)  # (b, h, c, q)
        states = torch.einsum("bcqn,bhcq,bcqhp->bchpn", B, decay_to_end, x)  # (b, c, h, p, n)

        # 3. Pass states across chunks: state entering chunk z = decayed sum of earlier chunks.
        states = F.pad(states, (0, 0, 0, 0, 0, 0, 1, 0))  # (b, c+1, h, p, n): zero initial state
        chunk_decay = torch.exp(segsum(F.pad(dA_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
        states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)[:, :-1]  # (b, c, h, p, n)

        # 4. Inter-chunk output: read the incoming state, decayed to each position.
        y_off = torch.einsum("bcqn,bchpn,bhcq->bcqhp", C, states, torch.exp(dA_cum))  # (b, c, q, h, p)

        y = rearrange(y_diag + y_off, "b c q h p -> b (c q) h p")[:, :seqlen]  # (b, l, h, p)
    return y.to(out_dtype)


class GatedRMSNorm(nn.Module):
    """mamba-ssm's RMSNormGated with norm_before_gate=False: rmsnorm(y * silu(z)) * weight.

    Computed in float32; returns y's dtype. y, z: (..., d) -> (..., d).
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        g = y.float() * F.silu(z.float())  # (..., d)
        g = g * torch.rsqrt(g.square().mean(dim=-1, keepdim=True) + self.eps)
        return (g * self.weight.float()).to(y.dtype)


class Mamba2(nn.Module):
    """Mamba-2 mixer, (b, l, d_model) -> (b, l, d_model); see the module docstring for backends.

    Checkpoint-compatible with mamba-ssm's Mamba2(ngroups=1, bias=False, conv_bias=True,
    D_has_hdim=False, rmsnorm=True, norm_before_gate=False). Submodules are built in mamba-ssm's
    order, so the same seed gives the same initial weights.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = 256,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple = (1, 16),
        backend: str = "auto",
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.headdim = headdim
        self.chunk_size = chunk_size
        self.backend = backend
        self.d_inner = expand * d_model
        assert self.d_inner % headdim == 0, "expand * d_model must be divisible by headdim"
        self.nheads = self.d_inner // headdim
        self.conv_dim = self.d_inner + 2 * d_state

        # in_proj rows: z (d_inner) | x (d_inner) | B (d_state) | C (d_state) | dt (nheads)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim, padding=d_conv - 1
        )

        # dt log-uniform in [dt_min, dt_max]; store its inverse softplus so softplus(dt_bias) = dt.
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        assert 0 < A_init_range[0] <= A_init_range[1]
        A = torch.empty(self.nheads, dtype=torch.float32).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def backend_for(self, u: torch.Tensor) -> str:
        """The backend ("torch" or "cuda") a forward on `u` will use."""
        if self.backend == "torch":
            return "torch"
        usable = u.is_cuda and mamba_ssm_available()
        if self.backend == "cuda" and not usable:
            raise RuntimeError(
                "backend='cuda' needs a CUDA input and an importable mamba_ssm "
                f"(input on {u.device}, mamba_ssm available: {mamba_ssm_available()})"
            )
        return "cuda" if usable else "torch"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: (b, l, d_model) -> (b, l, d_model)."""
        use_cuda = self.backend_for(u) == "cuda"
        scan_fn, conv_fn = _load_kernels() if use_cuda else (None, None)

        zxbcdt = self.in_proj(u)  # (b, l, 2*d_inner + 2*d_state + nheads)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = self._conv(xBC, conv_fn)  # (b, l, conv_dim)
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
        # float32 even for half-precision weights: exp(A_log) would overflow in fp16.
        A = -torch.exp(self.A_log.float())  # (h,)

        if use_cuda:
            y = scan_fn(
                x, dt, A, B[:, :, None], C[:, :, None],  # B, C: (b, l, 1, n), i.e. ngroups=1
                chunk_size=self.chunk_size, D=self.D, z=None, dt_bias=self.dt_bias, dt_softplus=True,
            )  # (b, l, h, p)
        else:
            dt = F.softplus(dt.float() + self.dt_bias.float())  # (b, l, h)
            y = ssd_chunked(x, dt, A, B, C, self.chunk_size)  # (b, l, h, p)
            y = y + x * self.D[:, None]  # (b, l, h, p)

        y = rearrange(y, "b l h p -> b l (h p)")
        return self.out_proj(self.norm(y, z))

    def _conv(self, xBC: torch.Tensor, conv_fn) -> torch.Tensor:
        """Depthwise causal conv + SiLU over time. xBC: (b, l, conv_dim) -> (b, l, conv_dim)."""
        if conv_fn is not None:
            weight = rearrange(self.conv1d.weight, "d 1 w -> d w")
            return conv_fn(xBC.transpose(1, 2), weight, bias=self.conv1d.bias, activation="silu").transpose(1, 2)
        # A sum of d_conv shifted copies: same result as self.conv1d (whose parameters it uses), and
        # on CPU many times faster than depthwise conv1d, whose backward takes a slow generic path.
        weight = self.conv1d.weight[:, 0, :]  # (conv_dim, d_conv): tap k reads time t - (d_conv - 1) + k
        length = xBC.shape[1]
        padded = F.pad(xBC, (0, 0, self.d_conv - 1, 0))  # (b, l + d_conv - 1, conv_dim)
        out = self.conv1d.bias + padded[:, :length] * weight[:, 0]  # (b, l, conv_dim)
        for k in range(1, self.d_conv):
            out = out + padded[:, k : k + length] * weight[:, k]
        return F.silu(out)
