"""Mamba-2 mixer layer: full-sequence forward and a recurrent step, in plain PyTorch or mamba-ssm kernels.

This module owns `Mamba2`, a twin of mamba-ssm 2.3.x `mamba_ssm.modules.mamba2.Mamba2` restricted
to ngroups=1, and `Mamba2State`, the state it carries between calls. Parameter names, shapes, init
(by default) and checkpoint layout match mamba-ssm, so a state dict moves between the two unchanged.
The scans themselves live in `melee_model.ssd`.

Two ways through the layer, equal up to rounding:
- `forward(u)`: a whole sequence (b, l, d_model) at once, via the chunked SSD scan; with
  `state=` it continues from a carried state, with `return_state=True` it also returns the state after
  the sequence (taken from the scan's final state, not by stepping).
- `step(u_t, state)`: one frame (b, d_model), carrying the conv window and the SSM state.

Backend rule, decided on every call:
- "torch": plain PyTorch (`ssd_chunked`, `ssd_step`); runs on CPU, MPS and CUDA, scans in float32.
- "cuda":  mamba-ssm's Triton `mamba_chunk_scan_combined` and `selective_state_update` (+
           `causal_conv1d` when installed and no state comes in); raises if the input is not on CUDA
           or the kernels cannot be imported. Its step is inference only (no autograd).
- "auto":  "cuda" when the input is on a CUDA device and the kernels import, else "torch".

Shape letters: b batch, l sequence length, h heads (nheads), p head dim (headdim), n state size
(d_state), d conv_dim = d_inner + 2 * d_state, w conv width (d_conv).
"""

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from melee_encode.errors import ConfigError
from melee_model.ssd import ssd_chunked, ssd_step

BACKENDS = ("auto", "torch", "cuda")
# dt_bias / A_log init: mamba-ssm's (dt log-uniform in [dt_min, dt_max], A uniform in A_init_range)
# or the reference implementation's (dt_bias uniform in [-1, 1], A = 1 .. nheads).
SSM_INITS = ("mamba_ssm", "reference")


class Kernels(NamedTuple):
    """mamba-ssm's Triton kernels (and causal-conv1d's, or None)."""

    chunk_scan: object  # mamba_chunk_scan_combined
    state_update: object  # selective_state_update
    conv: object  # causal_conv1d_fn or None


class Mamba2State(NamedTuple):
    """What a Mamba2 layer carries from one frame to the next.

    conv: (b, d, w), the last d_conv conv inputs (pre-activation xBC), oldest first, zeros before the
          start; in the conv weight's dtype.
    ssm:  (b, h, p, n), the SSM state, in float32 (float64 for a float64 layer).
    """

    conv: torch.Tensor
    ssm: torch.Tensor


# None until the first lookup, then False or a Kernels.
_kernels = None


def _load_kernels():
    """Import mamba-ssm's kernels (and causal-conv1d if present) once; cache the outcome."""
    global _kernels
    if _kernels is None:
        try:
            # Importing a submodule still runs mamba_ssm/__init__, which fails without the
            # compiled extension; both failure modes mean "no kernels", not a crash.
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        except (ImportError, OSError):
            _kernels = False
        else:
            try:
                from causal_conv1d import causal_conv1d_fn
            except (ImportError, OSError):
                causal_conv1d_fn = None
            _kernels = Kernels(mamba_chunk_scan_combined, selective_state_update, causal_conv1d_fn)
    return _kernels


def mamba_ssm_available() -> bool:
    """True when mamba-ssm's Triton kernels can be imported (says nothing about a GPU)."""
    return bool(_load_kernels())


def init_dt_bias_and_A_log(scheme, nheads, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, A_init_range=(1, 16)):
    """Initial (dt_bias (h,), A_log (h,)) under `scheme`, one of SSM_INITS (see there)."""
    if scheme == "mamba_ssm":
        # dt log-uniform in [dt_min, dt_max]; store its inverse softplus so softplus(dt_bias) = dt.
        dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        dt_bias = dt + torch.log(-torch.expm1(-dt))
        assert 0 < A_init_range[0] <= A_init_range[1]
        A = torch.empty(nheads, dtype=torch.float32).uniform_(*A_init_range)
        return dt_bias, torch.log(A)
    if scheme == "reference":
        dt_bias = torch.empty(nheads).uniform_(-1, 1)
        return dt_bias, torch.log(torch.linspace(1, nheads, nheads))
    raise ConfigError(f"ssm_init must be one of {SSM_INITS}, got {scheme!r}")


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
    order, so with ssm_init="mamba_ssm" the same seed gives the same initial weights.
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
        ssm_init: str = "mamba_ssm",
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if ssm_init not in SSM_INITS:
            raise ConfigError(f"ssm_init must be one of {SSM_INITS}, got {ssm_init!r}")
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
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim, padding=d_conv - 1)
        dt_bias, A_log = init_dt_bias_and_A_log(ssm_init, self.nheads, dt_min, dt_max, dt_init_floor, A_init_range)
        self.dt_bias = nn.Parameter(dt_bias)
        self.A_log = nn.Parameter(A_log)
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def backend_for(self, u: torch.Tensor) -> str:
        """The backend ("torch" or "cuda") a call on `u` will use."""
        if self.backend == "torch":
            return "torch"
        usable = u.is_cuda and mamba_ssm_available()
        if self.backend == "cuda" and not usable:
            raise RuntimeError(
                "backend='cuda' needs a CUDA input and an importable mamba_ssm "
                f"(input on {u.device}, mamba_ssm available: {mamba_ssm_available()})"
            )
        return "cuda" if usable else "torch"

    def initial_state(self, batch: int, device=None) -> Mamba2State:
        """The state before the first frame (all zeros): conv (b, d, w), ssm (b, h, p, n)."""
        device = self.A_log.device if device is None else device
        conv = torch.zeros(batch, self.conv_dim, self.d_conv, dtype=self.conv1d.weight.dtype, device=device)
        ssm_dtype = torch.promote_types(self.A_log.dtype, torch.float32)
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, dtype=ssm_dtype, device=device)
        return Mamba2State(conv, ssm)

    def forward(self, u: torch.Tensor, state: Mamba2State | None = None, return_state: bool = False):
        """u: (b, l, d_model) -> y (b, l, d_model), or (y, Mamba2State after u) with return_state.

        state: the Mamba2State u continues from (None: u starts a sequence). `state` is not modified.
        """
        kernels = _load_kernels() if self.backend_for(u) == "cuda" else None

        zxbcdt = self.in_proj(u)  # (b, l, 2*d_inner + 2*d_state + nheads)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_state = self._conv_window(xBC, state) if return_state else None  # (b, d, w)
        xBC = self._conv(xBC, kernels.conv if kernels else None, state)  # (b, l, d)
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
        # float32 even for half-precision weights: exp(A_log) would overflow in fp16.
        A = -torch.exp(self.A_log.float())  # (h,)
        initial = None if state is None else state.ssm  # (b, h, p, n)

        if kernels:
            scan = kernels.chunk_scan(
                x,
                dt,
                A,
                B[:, :, None],
                C[:, :, None],  # B, C: (b, l, 1, n), i.e. ngroups=1
                chunk_size=self.chunk_size,
                D=self.D,
                z=None,
                dt_bias=self.dt_bias,
                dt_softplus=True,
                initial_states=initial,
                return_final_states=return_state,
            )  # y (b, l, h, p)[, final state (b, h, p, n)]
        else:
            dt = F.softplus(dt.float() + self.dt_bias.float())  # (b, l, h)
            scan = ssd_chunked(x, dt, A, B, C, self.chunk_size, initial, return_state)
        y, ssm_state = scan if return_state else (scan, None)
        if not kernels:
            y = y + x * self.D[:, None]  # (b, l, h, p)

        y = rearrange(y, "b l h p -> b l (h p)")
        out = self.out_proj(self.norm(y, z))  # (b, l, d_model)
        return (out, Mamba2State(conv_state, ssm_state)) if return_state else out

    def step(self, u_t: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        """One frame: u_t (b, d_model), state -> (y_t (b, d_model), the state after u_t).

        Equal to the matching frame of `forward` over the whole sequence. `state` is not modified;
        start from `initial_state(b)` or from `forward(prefix, return_state=True)`.
        """
        kernels = _load_kernels() if self.backend_for(u_t) == "cuda" else None

        zxbcdt = self.in_proj(u_t)  # (b, 2*d_inner + 2*d_state + nheads)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_state = self._conv_window(xBC[:, None], state)  # (b, d, w)
        xBC = self._conv(xBC[:, None], None, state)[:, 0]  # (b, d)
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        x = rearrange(x, "b (h p) -> b h p", p=self.headdim)
        A = -torch.exp(self.A_log.float())  # (h,)

        if kernels:
            # The kernel updates the state in place and wants per-(head, dim) parameters; stride-0
            # views over the head dim select its tied-head fast path.
            h, p, n = self.nheads, self.headdim, self.d_state
            ssm_state = state.ssm.clone()  # (b, h, p, n)
            y = kernels.state_update(
                ssm_state,
                x,
                dt[..., None].expand(-1, h, p),
                A[:, None, None].expand(h, p, n),
                B,
                C,
                D=self.D[:, None].expand(h, p),
                z=None,
                dt_bias=self.dt_bias[:, None].expand(h, p),
                dt_softplus=True,
            )  # (b, h, p)
        else:
            dt = F.softplus(dt.float() + self.dt_bias.float())  # (b, h)
            y, ssm_state = ssd_step(state.ssm, x, dt, A, B, C)  # (b, h, p), (b, h, p, n)
            y = y + x * self.D[:, None]  # (b, h, p)

        y = rearrange(y, "b h p -> b (h p)")
        return self.out_proj(self.norm(y, z)), Mamba2State(conv_state, ssm_state)

    def _conv_window(self, xBC: torch.Tensor, state: Mamba2State | None) -> torch.Tensor:
        """The conv state after xBC (b, l, d): its last d_conv inputs, (b, d, w), zeros before the start."""
        xBC = xBC.transpose(1, 2).to(self.conv1d.weight.dtype)  # (b, d, l)
        if state is None:
            return F.pad(xBC, (self.d_conv, 0))[..., -self.d_conv :]
        return torch.cat([state.conv, xBC], dim=-1)[..., -self.d_conv :]

    def _conv(self, xBC: torch.Tensor, conv_fn, state: Mamba2State | None = None) -> torch.Tensor:
        """Depthwise causal conv + SiLU over time. xBC: (b, l, d) -> (b, l, d).

        The first outputs read the inputs carried in `state` (zeros when None).
        """
        if conv_fn is not None and state is None:
            weight = rearrange(self.conv1d.weight, "d 1 w -> d w")
            return conv_fn(xBC.transpose(1, 2), weight, bias=self.conv1d.bias, activation="silu").transpose(1, 2)
        # A sum of d_conv shifted copies: same result as self.conv1d (whose parameters it uses), and
        # on CPU many times faster than depthwise conv1d, whose backward takes a slow generic path.
        weight = self.conv1d.weight[:, 0, :]  # (d, w): tap k reads time t - (d_conv - 1) + k
        length = xBC.shape[1]
        if state is None:
            padded = F.pad(xBC, (0, 0, self.d_conv - 1, 0))  # (b, l + w - 1, d)
        else:
            history = state.conv[..., 1:].transpose(1, 2).to(xBC.dtype)  # (b, w - 1, d)
            padded = torch.cat([history, xBC], dim=1)  # (b, l + w - 1, d)
        out = self.conv1d.bias + padded[:, :length] * weight[:, 0]  # (b, l, d)
        for k in range(1, self.d_conv):
            out = out + padded[:, k : k + length] * weight[:, k]
        return F.silu(out)
