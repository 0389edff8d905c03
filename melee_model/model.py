"""The world models: predict frame t from frames t-K .. t-1 and the controllers at t (spec section 4).

Two architectures share the frame embedding and the prediction heads:
- `FrameStackMamba2`: embedded frames -> Linear -> n_layers pre-norm residual Mamba-2 blocks -> last
  timestep -> RMSNorm -> + Linear(next_ctrl) -> heads (4,345,444 parameters at the run card's config).
- `FrameStackMLP`: the K embedded frames flattened, with next_ctrl -> two ReLU layers -> heads (the
  baseline, 1,874,516 parameters).

Shape letters: B batch, K context frames, F n_float, I n_int, E embedded frame width (278 at v3),
C ctrl_dim, D d_model (or the MLP's last hidden size), T float_target_dim, V a field's vocabulary.

Every forward returns the same dict: "float" (B, T) with the float_tgt blocks in order (binary entries
are logits), and for each field of TARGET_FIELDS (B, 2, V) logits, player axis second. Parameters stay
float32; under autocast the outputs may be bfloat16 (the losses cast them back). With
model.motion_prior "constant_velocity" both add each player's last x and y step to those outputs
(`motion.MotionPrior`; "scaled_velocity": that step times 1 + a gain learned from the heads' input);
the targets, the losses and the rollouts stay the same. With
model.motion_inputs each frame also feeds the model its players' x and y steps in game units
(`motion.MotionSteps`), which every replay version has, where older replays have no speed columns.
With model.hold_gate the dict also holds "hold" (B, 2), a logit per player that its x and y stay
exactly as they are, and where it is over 0 those outputs are no motion (`motion.HoldGate`).
With model.rollout_age, FrameStackMamba2's recurrent `predict` also takes how many of the frames it
read were the model's own (`RolloutAge`); every full forward reads real frames only.

FrameStackMamba2 is causal, so one pass over L frames can predict from every position (the sequence
objective): given next_ctrl (B, L, C), one control vector per position, its forward returns the same
dict with a position axis, "float" (B, L, T) and field -> (B, L, 2, V); position j reads frames <= j
only, and the card's forward is exactly the last position. The same weights serve both, and a
recurrent step (`prefill`, `step`, `predict`) gives the same outputs one frame at a time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from melee_encode.errors import ConfigError
from melee_model.config import ModelConfig
from melee_model.layout import TARGET_FIELDS, FrameLayout
from melee_model.mamba2 import Mamba2, Mamba2State
from melee_model.motion import MotionSteps, build_hold, build_motion, build_prior


class FrameEmbedding(nn.Module):
    """A frame as one vector: its floats, then the embeddings of its int columns in int-column order,
    then, with model.motion_inputs, its players' x and y steps in game units (`MotionSteps`).

    One table per int field, shared by both players (p0.action and p1.action look up the same table).
    float_ctx (B, K, F), int_ctx (B, K, I), steps (B, K, P) (`MotionSteps.steps` of float_ctx, or of
    the frames with the one before them; with motion inputs only, else None) -> (B, K, E),
    E = F + sum of the columns' embedding dims (+ P with motion inputs).
    """

    def __init__(self, layout: FrameLayout, embed_dims: dict, motion: MotionSteps | None = None):
        super().__init__()
        missing = [f for f in layout.embedded_fields if f not in embed_dims]
        if missing:
            raise ConfigError(f"model.embed_dims has no size for int field(s) {', '.join(missing)}")
        self.tables = nn.ModuleDict({f: nn.Embedding(layout.vocab(f), embed_dims[f]) for f in layout.embedded_fields})
        self.column_fields = tuple(c.field for c in layout.schema.int_columns)
        self.motion = motion
        n_steps = len(layout.moving_columns) if motion is not None else 0
        self.out_dim = layout.n_float + sum(embed_dims[f] for f in self.column_fields) + n_steps

    def forward(self, float_ctx: torch.Tensor, int_ctx: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        embedded = [self.tables[f](int_ctx[..., i]) for i, f in enumerate(self.column_fields)]  # each (B, K, dim)
        if self.motion is None:
            return torch.cat([float_ctx, *embedded], dim=-1)  # (B, K, E)
        return torch.cat([float_ctx, *embedded, self.motion.game_units(steps).to(float_ctx.dtype)], dim=-1)  # (B, K, E)


def build_embedding(layout: FrameLayout, config: ModelConfig, motion: MotionSteps | None) -> FrameEmbedding:
    """The model's frame embedding: it reads the players' steps (`motion`) with model.motion_inputs only."""
    return FrameEmbedding(layout, config.embed_dims, motion if config.motion_inputs else None)


class PredictionHeads(nn.Module):
    """Linear heads from a hidden vector to every target.

    One Linear per float block (sized by layout.float_blocks) and, per field of TARGET_FIELDS, one
    Linear per player. h (..., D) -> {"float": (..., T), field: (..., 2, V) for each field}.
    """

    def __init__(self, layout: FrameLayout, d_in: int):
        super().__init__()
        self.float_heads = nn.ModuleDict({name: nn.Linear(d_in, block.stop - block.start) for name, block in layout.float_blocks.items()})
        self.int_heads = nn.ModuleDict({f: nn.ModuleList([nn.Linear(d_in, layout.vocab(f)) for _ in (0, 1)]) for f in TARGET_FIELDS})

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        # float_blocks is in float_tgt order, so concatenating the blocks rebuilds float_tgt's layout.
        out = {"float": torch.cat([head(h) for head in self.float_heads.values()], dim=-1)}  # (..., T)
        for f, heads in self.int_heads.items():
            out[f] = torch.stack([head(h) for head in heads], dim=-2)  # (..., 2, V)
        return out


AGE_PARAMETERS = "age."  # the start of the names of FrameStackMamba2's RolloutAge parameters (its `age`)


class RolloutAge(nn.Module):
    """model.rollout_age: what a recurrent prediction learns from how many of the frames it read were
    the model's own (its age): a vector per age added to the heads' input, and a factor per age on
    the players' predicted x and y steps, for counts past `after` (model.rollout_age_after).

    A rollout's predictions read the model's own frames, whose errors a teacher-forced prediction never
    sees; trained by unrolled rows (train.unroll), this lets the heads answer differently there, e.g.
    move the players less as the rollout's frames get older, without touching the teacher-forced
    outputs. Age 0 (real frames only) is the padding row of both tables: zero, never trained. The
    other rows start at zero (a factor of 1 + 0), so an untrained table changes nothing. Age a reads
    row a - after (row 0 up to `after`); counts past after + oldest share the oldest's row. The factor
    is one per axis, shared by both players.

    inputs(h (..., D), age (...,) or an int) -> (..., D): h plus the age's vector.
    moves(pred_float (..., T), age) -> (..., T): the x and y outputs (layout.moving_target_positions,
    the players' steps) times 1 + the age's factors.
    """

    def __init__(self, layout: FrameLayout, oldest: int, d_model: int, after: int = 0):
        super().__init__()
        if oldest < 1 or after < 0:
            raise ConfigError(f"model.rollout_age must be >= 0 (0: off) and rollout_age_after >= 0, got {oldest} and {after}")
        self.oldest, self.after = oldest, after
        self.table = nn.Embedding(oldest + 1, d_model, padding_idx=0)
        self.motion = nn.Embedding(oldest + 1, 2, padding_idx=0)  # x, y
        for table in (self.table, self.motion):
            nn.init.zeros_(table.weight)
        self.register_buffer("positions", torch.tensor(layout.moving_target_positions), persistent=False)  # p0.x, p0.y, p1.x, p1.y

    def inputs(self, h: torch.Tensor, age: torch.Tensor | int) -> torch.Tensor:
        return h + self.table(self._clamped(age, h)).to(h.dtype)  # (..., D)

    def moves(self, pred_float: torch.Tensor, age: torch.Tensor | int) -> torch.Tensor:
        factor = (1 + self.motion(self._clamped(age, pred_float))).tile(2)  # (..., 4): p0.x, p0.y, p1.x, p1.y
        steps = pred_float[..., self.positions] * factor.to(pred_float.dtype)  # (..., 4)
        return pred_float.index_copy(-1, self.positions, steps)  # (..., T)

    def _clamped(self, age: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(age, device=like.device) - self.after).clamp(0, self.oldest)  # (...,)


class FrameStackState(NamedTuple):
    """What FrameStackMamba2 carries from one frame to the next in recurrent inference."""

    layers: list[Mamba2State]  # one per layer
    # With a motion prior or motion inputs (else None): the last frame's moving columns (B, P), and
    # its step (MotionSteps; 0 after a single frame): predict's `step`.
    moving: torch.Tensor | None = None
    step: torch.Tensor | None = None


class FrameStackMamba2(nn.Module):
    """Embedded frames through pre-norm residual Mamba-2 blocks; a position plus its next_ctrl feeds the heads.

    forward(float_ctx (B, K, F), int_ctx (B, K, I), next_ctrl) -> the heads' dict (module docstring):
    next_ctrl (B, C) predicts from the last position only (the run card's objective); next_ctrl
    (B, K, C) predicts from every position j, each with its own controls (the sequence objective).
    No state is kept between calls: the output depends on the given K frames only.

    Recurrent inference carries the layers' states instead of re-reading the frames:
    `prefill(float_ctx, int_ctx)` runs a real context and `step(float_t, int_t, state)` one frame more,
    each returning the residual stream of its last frame (B, D) and a FrameStackState;
    `predict(x, next_ctrl, state.step)` applies the heads. Together they equal the full forward over
    the same frames.
    """

    def __init__(self, layout: FrameLayout, config: ModelConfig):
        super().__init__()
        self.config = config
        self.motion = build_motion(config, layout)
        self.embed = build_embedding(layout, config, self.motion)
        self.in_proj = nn.Linear(self.embed.out_dim, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.norms = nn.ModuleList([nn.RMSNorm(config.d_model, eps=1e-5) for _ in range(config.n_layers)])
        self.mixers = nn.ModuleList(
            [
                Mamba2(
                    config.d_model,
                    d_state=config.d_state,
                    d_conv=config.d_conv,
                    expand=config.expand,
                    headdim=config.headdim,
                    chunk_size=config.chunk_size,
                    backend=config.backend,
                    ssm_init=config.ssm_init,
                )
                for _ in range(config.n_layers)
            ]
        )
        self.final_norm = nn.RMSNorm(config.d_model, eps=1e-5)
        self.ctrl_proj = nn.Linear(layout.ctrl_dim, config.d_model)
        self.heads = PredictionHeads(layout, config.d_model)
        self.prior = build_prior(config, layout, self.heads, config.d_model)
        self.hold = build_hold(config, layout, config.d_model)
        self.age = RolloutAge(layout, config.rollout_age, config.d_model, config.rollout_age_after) if config.rollout_age else None

    def forward(self, float_ctx, int_ctx, next_ctrl) -> dict[str, torch.Tensor]:
        steps = self.motion.steps(float_ctx) if self.motion is not None else None  # (B, K, P)
        x = self._frames(float_ctx, int_ctx, steps)  # (B, K, D)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))  # (B, K, D)
        if next_ctrl.dim() == 2:  # the card's objective: the last position only
            x, steps = x[:, -1], steps[:, -1] if steps is not None else None  # (B, D), (B, P)
        elif next_ctrl.shape[1] != x.shape[1]:
            raise ValueError(f"next_ctrl has {next_ctrl.shape[1]} positions for {x.shape[1]} frames")
        return self.predict(x, next_ctrl, steps)

    def predict(
        self, x: torch.Tensor, next_ctrl: torch.Tensor, step: torch.Tensor | None = None, age: torch.Tensor | int = 0
    ) -> dict[str, torch.Tensor]:
        """The heads from the residual stream x (..., D) and the controls next_ctrl (..., C); with a
        motion prior, plus the last step of the moving columns at x's frame, step (..., P); with
        model.rollout_age, `age` (...,) or an int: how many of the frames read were the model's own."""
        h = self.final_norm(x) + self.ctrl_proj(next_ctrl)  # (..., D)
        if self.age is not None:
            h = self.age.inputs(h, age)  # (..., D)
        out = self.heads(h)
        if self.prior is not None:
            if step is None:
                raise ValueError("this model has a motion prior: predict needs the last step (FrameStackState.step)")
            out["float"] = self.prior.add(out["float"], step, h)  # (..., T)
        if self.age is not None:
            out["float"] = self.age.moves(out["float"], age)  # (..., T)
        return out if self.hold is None else self.hold(out, h)

    def prefill(self, float_ctx: torch.Tensor, int_ctx: torch.Tensor) -> tuple[torch.Tensor, FrameStackState]:
        """A real context (B, K, ...) in one pass: (the residual stream of its last frame (B, D), the
        state after it)."""
        steps = self.motion.steps(float_ctx) if self.motion is not None else None  # (B, K, P)
        x, layers = self._frames(float_ctx, int_ctx, steps), []  # (B, K, D)
        for norm, mixer in zip(self.norms, self.mixers):
            y, layer_state = mixer(norm(x), return_state=True)
            x = x + y  # (B, K, D)
            layers.append(layer_state)
        if self.motion is None:
            return x[:, -1], FrameStackState(layers)
        return x[:, -1], FrameStackState(layers, self.motion.moving(float_ctx[:, -1]), steps[:, -1])  # (B, P) each

    def step(self, float_t: torch.Tensor, int_t: torch.Tensor, state: FrameStackState) -> tuple[torch.Tensor, FrameStackState]:
        """One frame more: float_t (B, F), int_t (B, I) -> (its residual stream (B, D), the new state)."""
        moving = step = steps = None
        if self.motion is not None:
            moving = self.motion.moving(float_t)  # (B, P)
            step = self.motion.step(moving, state.moving)  # (B, P)
            steps = step[:, None]  # (B, 1, P)
        x, layers = self._frames(float_t[:, None], int_t[:, None], steps)[:, 0], []  # (B, D)
        for norm, mixer, layer_state in zip(self.norms, self.mixers, state.layers):
            y, layer_state = mixer.step(norm(x), layer_state)
            x = x + y  # (B, D)
            layers.append(layer_state)
        return x, FrameStackState(layers, moving, step)

    def _frames(self, float_ctx: torch.Tensor, int_ctx: torch.Tensor, steps: torch.Tensor | None) -> torch.Tensor:
        """(B, K, F), (B, K, I), the frames' steps (B, K, P) or None -> the residual stream's input (B, K, D), float32."""
        x = self.dropout(self.in_proj(self.embed(float_ctx, int_ctx, steps)))  # (B, K, D)
        # The residual stream stays float32 under autocast (mamba-ssm's residual_in_fp32): small block
        # updates would round away in bfloat16, and RMSNorm gets an input matching its fp32 weight.
        return x.float()

    def architecture(self) -> str:
        c = self.config
        return (
            f"FrameStackMamba2: d_model {c.d_model}, n_layers {c.n_layers}, d_state {c.d_state}, "
            f"headdim {c.headdim}, expand {c.expand}, d_conv {c.d_conv}, chunk_size {c.chunk_size}, "
            f"dropout {c.dropout}, backend {c.backend}, ssm_init {c.ssm_init}, motion_prior {c.motion_prior}, "
            f"motion_inputs {c.motion_inputs}, hold_gate {c.hold_gate}, rollout_age {c.rollout_age} after {c.rollout_age_after}"
        )


class FrameStackMLP(nn.Module):
    """The baseline: K embedded frames flattened with next_ctrl, two ReLU layers, the same heads.

    forward(float_ctx (B, K, F), int_ctx (B, K, I), next_ctrl (B, C)) -> the heads' dict; K must be
    layout.context_len, since the first layer's width depends on it.
    """

    def __init__(self, layout: FrameLayout, config: ModelConfig):
        super().__init__()
        if len(config.mlp_hidden) != 2:
            raise ConfigError(f"model.mlp_hidden must hold two sizes, got {config.mlp_hidden}")
        if config.rollout_age:
            raise ConfigError(
                "model.rollout_age needs recurrent predictions (model.arch 'mamba2'); FrameStackMLP reads real and own frames alike"
            )
        self.config = config
        self.context_len = layout.context_len
        self.motion = build_motion(config, layout)
        self.embed = build_embedding(layout, config, self.motion)
        hidden1, hidden2 = config.mlp_hidden
        self.mlp = nn.Sequential(
            nn.Linear(layout.context_len * self.embed.out_dim + layout.ctrl_dim, hidden1),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden1, hidden2),
            nn.ReLU(),
            nn.Dropout(config.dropout),
        )
        self.heads = PredictionHeads(layout, hidden2)
        self.prior = build_prior(config, layout, self.heads, hidden2)
        self.hold = build_hold(config, layout, hidden2)

    def forward(self, float_ctx, int_ctx, next_ctrl) -> dict[str, torch.Tensor]:
        if next_ctrl.dim() != 2:
            raise ConfigError("FrameStackMLP predicts from a whole K-frame context: it trains with data.objective 'last', not 'sequence'")
        steps = self.motion.steps(float_ctx) if self.motion is not None else None  # (B, K, P)
        frames = self.embed(float_ctx, int_ctx, steps).flatten(1)  # (B, K*E)
        h = self.mlp(torch.cat([frames, next_ctrl], dim=-1))  # (B, hidden2)
        out = self.heads(h)
        if self.prior is not None:
            out["float"] = self.prior.add(out["float"], steps[:, -1], h)  # (B, T)
        return out if self.hold is None else self.hold(out, h)

    def architecture(self) -> str:
        c = self.config
        return (
            f"FrameStackMLP: hidden {list(c.mlp_hidden)}, context {self.context_len} frames, dropout {c.dropout}, "
            f"motion_prior {c.motion_prior}, motion_inputs {c.motion_inputs}, hold_gate {c.hold_gate}"
        )


ARCHS = {"mamba2": FrameStackMamba2, "mlp": FrameStackMLP}  # model.arch -> model


def build_model(config: ModelConfig, layout: FrameLayout) -> nn.Module:
    """The model named by config.arch."""
    if config.arch not in ARCHS:
        raise ConfigError(f"unknown model.arch {config.arch!r}; options: {', '.join(ARCHS)}")
    if config.rollout_age_after and not config.rollout_age:
        raise ConfigError(f"model.rollout_age_after {config.rollout_age_after} needs rollout_age, the tables it shifts (0: off)")
    return ARCHS[config.arch](layout, config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_model(model: nn.Module, layout: FrameLayout) -> str:
    """A few lines for the start-up log: architecture, parameter count and per-frame sizes."""
    return "\n".join(
        [
            f"model: {model.architecture()}",
            f"parameters: {count_parameters(model):,}",
            f"frame: {layout.n_float} floats + {layout.n_int} ints -> {model.embed.out_dim} embedded; context {layout.context_len} frames",
            f"next_ctrl: {layout.ctrl_dim}; targets: {layout.float_target_dim} floats, "
            f"{layout.int_target_dim} ints ({', '.join(TARGET_FIELDS)} per player)",
            *(["stocks: predicted as a change (data.stocks_target delta)"] if layout.stocks_target == "delta" else []),
            *(["rollouts: predicted frames land on the main platform (model.stage_floor)"] if layout.stage_floor else []),
        ]
    )
