"""Experiment configuration: typed dataclasses, loaded from YAML with unknown keys refused.

One `ExperimentConfig` holds everything a run needs: the encoding it expects of the store, the data
options (examples, split, filters, batching), the model, the loss weights, the training schedule and
the logging. `load_config(path, overrides)` reads a YAML file and applies `section.key=value`
overrides from the command line; a misspelled key anywhere is an error naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from melee_encode.config import EncodingConfig
from melee_encode.errors import ConfigError


@dataclass
class DataConfig:
    objective: str = "last"  # "last": the run card's, one target per K-frame example; "sequence": every position
    seq_len: int = 64  # sequence objective: positions (targets) per window of seq_len + 1 frames
    warmup: int = 0  # sequence objective: the first positions of a window are context only, never targets
    context_len: int = 10  # K: context frames per example
    press_events: bool = False  # add the 16 button rising edges to next_ctrl
    lookahead: int = 0  # d: controls of t .. t+d, target frame t+d
    # With lookahead d, delta targets are frame t+d minus: "from_context" the last context frame t-1
    # (ours), or "from_previous" frame t+d-1 (the reference's). The same when d is 0.
    lookahead_delta: str = "from_context"
    # Stocks, a dynamics column: "absolute" (the run card's) predicts the count itself, as the rest of
    # that block; "delta" predicts its change like a position's, and a rollout's frame rounds the
    # result to whole stocks. Absolute predictions were half a stock off from a rollout's first frame.
    stocks_target: str = "absolute"
    val_fraction: float = 0.1  # share of games in validation, decided per match (or per game by content hash)
    # Load-time game filters (empty: all). Names or ids, as melee-encode's filters.
    end_methods: list = field(default_factory=list)
    characters: list = field(default_factory=list)
    stages: list = field(default_factory=list)
    require_fields: str = "used"  # "used": games must have every replay field the encoding uses; "none"
    batch_size: int = 4096  # examples per batch per process
    # Mixing: the loader decodes `pieces_per_group` pieces of `piece_frames` stored frames, drawn at random
    # from the whole store, and shuffles their examples together (0: a piece is a whole stored chunk).
    # Memory per loader ~ pieces_per_group x piece_frames x 1.2 KB (one group batched, the next read).
    # Many small pieces over few large ones at the same memory: a group then samples more games, and
    # more places in each (benchmarks/mixing_quality.py: 3,072 x 256 trained 2-15% worse than a full
    # shuffle on held-out games, 1,024 x 768 within 0.5%; loader_throughput.py measures the speed).
    piece_frames: int = 1024
    pieces_per_group: int = 768
    # Faster, less mixed: with `chunk_visits` > 0 each stored chunk's pieces are dealt at random into this
    # many hands an epoch, and a group takes whole hands, so an epoch decodes a chunk about this many
    # times instead of up to once per piece (0, the default: pieces drawn one by one). On the 5,000-game
    # store, one loader process: 8 gave 459,000 examples/s and 525 games per batch of 4,096, 0 gave
    # 338,000 and 740 (loader_throughput.py); mixing_quality.py: 8 gave 1.073x a full shuffle's
    # held-out loss, 0 gave 1.002x (one run each).
    chunk_visits: int = 0
    decode_threads: int = 2  # threads each loader process decodes and copies chunks with
    num_workers: int = 2  # loader processes per training process (0: load in the training process)
    seed: int = 0
    # Remote stores (s3://, gs://): compressed chunks kept on local disk for later epochs, shared by
    # the loader processes of a machine, at most cache_mb MB (0: no cache). Local stores: unused.
    cache_dir: str = "~/.cache/melee-model/chunks"
    cache_mb: int = 0


@dataclass
class ModelConfig:
    arch: str = "mamba2"  # "mamba2" (FrameStackMamba2) or "mlp" (FrameStackMLP)
    d_model: int = 384
    n_layers: int = 4
    d_state: int = 64
    headdim: int = 64
    expand: int = 2
    d_conv: int = 4
    chunk_size: int = 10  # SSD chunk; the context is 10 frames
    dropout: float = 0.1
    mlp_hidden: list = field(default_factory=lambda: [512, 256])
    embed_dims: dict = field(
        default_factory=lambda: {
            "action": 32,
            "jumps_left": 4,
            "character": 8,
            "l_cancel": 2,
            "hurtbox_state": 2,
            "ground": 4,
            "last_attack_landed": 8,
            "state_age": 8,
            "stage": 4,
        }
    )
    backend: str = "auto"  # Mamba2 scan: "auto" (mamba-ssm kernels on CUDA if installed), "torch", "cuda"
    # Mamba2 dt_bias / A_log init: "mamba_ssm" (dt log-uniform in [1e-3, 0.1], A uniform in [1, 16]) or
    # "reference" (the run card's code: dt_bias uniform in [-1, 1], A = 1 .. nheads)
    ssm_init: str = "mamba_ssm"
    # The x and y outputs: "none" (the run card's): the predicted one-frame change itself;
    # "constant_velocity": the change of each player's last step (frame t-1 minus t-2) added to
    # that step, so an untrained model is the constant-velocity baseline (motion.MotionPrior);
    # "scaled_velocity": that step times 1 + a learned gain per player and axis, plus the change.
    motion_prior: str = "none"
    # Each frame's x and y steps (that frame minus the one before, in game units; 0 for the first frame
    # read and for a respawn) as 4 more inputs (motion.MotionSteps), so the model reads each player's
    # velocity from positions, which every replay has; older replays have no speed columns (a store's
    # fields_missing: 69% of the frames of ../shared/replays, 14% of ../shared/corpus). Off: the card's.
    motion_inputs: bool = False
    # Rollouts (and scheduled sampling's own frames) land a player on the main platform: one at or
    # above y = 0 whose next y would pass below it, over the platform, is put on it (stepper.StageFloor).
    # Off: the run card's frame rule, which only clamps to the game's ranges.
    stage_floor: bool = False
    # A logit per player that its x and y stay exactly as they are (motion.HoldGate): where it is over
    # 0, the x and y outputs are no motion. Players stand, hang on ledges and freeze in hitlag for
    # 28% of the frames, which a regression head only approaches. Off: the card's (no such head).
    hold_gate: bool = False
    # Recurrent predictions learn how many of the frames they read were the model's own (model.RolloutAge):
    # per count 1 .. rollout_age (counts past it share the last) a vector added to the heads' input and
    # a factor on the players' predicted x and y steps, zero (1) at first and for real frames, so
    # teacher-forced outputs are unchanged and only unrolled training (train.unroll, the rows it
    # predicts from own frames) trains them. 0, off: the card's.
    rollout_age: int = 0
    # The tables start after this many own frames: counts 1 .. rollout_age_after answer as real frames do
    # (count c reads row c - rollout_age_after), so the first frames of a rollout move as teacher-forced.
    rollout_age_after: int = 0


@dataclass
class LossConfig:
    """Weights of the loss terms (spec section 5); every CE is the mean of both players'."""

    continuous: float = 1.0
    velocity: float = 0.5
    dynamics: float = 0.5
    binary: float = 0.5
    action: float = 2.0
    jumps_left: float = 0.5
    l_cancel: float = 0.3
    hurtbox_state: float = 0.3
    ground: float = 0.3
    last_attack_landed: float = 0.3
    # How the squared errors of the float blocks (continuous, velocity, dynamics) are measured:
    # "encoded" (the run card's): in encoded units, so a column counts by its encoding's scale (a
    # position's one-frame change, ~0.15 encoded, weighs ~1/40 of a cross-entropy); "target_std": in
    # units of each target's standard deviation over the train split, so every column counts alike.
    float_weighting: str = "encoded"
    # The error of those blocks: "mse" (the run card's) or "huber", the squared error below
    # `huber_delta` (encoded units; 0.05 is one game unit of position) and linear above it, so the
    # rare jumps (a respawn moves a player ~170 units in a frame: 0.01% of frames hold 76% of the
    # position deltas' squared total, measured on ../shared/replays) no longer dominate the fit.
    float_loss: str = "mse"
    huber_delta: float = 0.05
    # Per-block deltas over huber_delta, e.g. {continuous: 0.0005}: a near-L1 continuous block (x, y,
    # damage, shield) while the velocity and dynamics blocks keep the squared error of small errors,
    # which one tiny delta for every block made nearly linear.
    huber_deltas: dict = field(default_factory=dict)
    # The hold gate's binary cross-entropy (model.hold_gate; the mean of both players'): unused without it.
    hold: float = 1.0


@dataclass
class ScheduledSamplingConfig:
    """From epoch 1 on (0-based), inputs made less perfect for a fraction of samples (melee_model.scheduled_sampling)."""

    # "noise": the run card's Gaussian noise; "model": the model's own one-step predictions; "rollout":
    # windows rolled out from a random position on (both: the sequence objective)
    mode: str = "noise"
    rate: float = 0.0  # fraction of samples (sequence objective: of input frames; mode rollout: of windows) at full anneal
    noise: float = 0.1  # Gaussian scale at full anneal
    anneal_epochs: int = 3  # rate and noise grow as min(1, epoch / anneal_epochs)
    frames: int = 3  # last context frames corrupted (card objective, noise)
    # Delta targets relative to the "clean" last context frame (the run card's), or to the "noisy" one
    # (mode "model": the model's own frame where it replaced the real one)
    targets: str = "clean"


@dataclass
class UnrollConfig:
    """A short rollout per window trained through the model's own frames (melee_model.unroll; sequence objective)."""

    frames: int = 0  # frames rolled out per window, each a target; 0: off (the run card's)
    weight: float = 1.0  # each rolled-out target counts this many teacher-forced ones
    start_epoch: int = 1  # the first epoch (0-based) that unrolls: a model trained teacher-forced first
    fields: str = "all"  # "all": whole own frames; "position": only x and y are the rollout's, the rest true; "motion": x, y and speeds
    # What the rolled-out rows train: "all" (every weight) or "age" (only model.rollout_age's tables; the
    # gradient still runs back through every step, but the weights teacher-forced rows train stay theirs)
    trains: str = "all"
    share: float = 1.0  # the fraction of batches that unroll, drawn per batch (1: every batch); the rest are teacher-forced only
    age_lr: float = 1.0  # model.rollout_age's tables learn at train.lr times this (a few hundred unrolled steps must move them)
    # "through": a rolled-out row's gradient runs back through every own frame before it (an early step
    # answers for every later frame too); "local": it stops at the own frame the row read, so each step
    # answers only for the frame it makes (and the backward pass skips the steps between)
    gradient: str = "through"


@dataclass
class TrainConfig:
    epochs: int = 2
    max_steps: int | None = None  # stop earlier (optimizer steps), e.g. for smoke runs
    max_seconds: float | None = None  # stop once fit() has run this long (wall clock), e.g. for equal-time comparisons
    schedule_steps: int | None = None  # optimizer steps the lr schedule spans (None: epochs x steps per epoch)
    lr: float = 5e-4
    # Cosine from lr to lr * min_lr_ratio: "per_step" (ours, smooth over every optimizer step),
    # "per_epoch" (the reference's CosineAnnealingLR(T_max=epochs), constant within each epoch) or
    # "per_second" (over train.max_seconds of wall clock: equal-time comparisons)
    lr_schedule: str = "per_step"
    weight_decay: float = 1e-5
    weight_decay_all: bool = False  # decay every parameter (the reference's); else matrices and embeddings only
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "auto"  # "auto": bf16 autocast on GPUs, fp32 on CPU; or "no" (fp32: the reference's), "bf16", "fp16"
    log_interval: int = 1000  # optimizer steps between logs
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: only each epoch)
    val_batches: int | None = None  # cap on validation batches per evaluation (None: all)
    eval_at_start: bool = False  # validate the untrained model first (logged at step 0)
    seed: int = 0
    scheduled_sampling: ScheduledSamplingConfig = field(default_factory=ScheduledSamplingConfig)
    unroll: UnrollConfig = field(default_factory=UnrollConfig)
    # Escape hatches (spec section 6), checked every `check_every` steps (each check syncs the host).
    check_every: int = 50
    stop_on_nonfinite: bool = True
    patience_batches: int = 10_000  # stop when the loss has not improved for this many batches
    min_val_change_acc: float | None = 0.60  # after the first epoch, stop below this


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "melee-worldmodel"
    entity: str | None = None
    mode: str = "auto"  # "auto": online when logged in, else offline; "online", "offline", "disabled"
    tags: list = field(default_factory=list)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    encoding: EncodingConfig = field(default_factory=EncodingConfig)  # what the store must hold
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or the defaults) and apply `section.key=value` overrides."""
    values = {}
    if path is not None:
        try:
            with open(path) as handle:
                values = yaml.safe_load(handle) or {}
        except OSError as error:
            raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        values.setdefault("name", Path(path).stem)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not section.key=value")
        _set_path(values, key.strip().split("."), yaml.safe_load(raw))
    return from_dict(ExperimentConfig, values)


def from_dict(cls, values: dict, where: str = ""):
    """Build dataclass `cls` from a mapping, recursively; unknown keys raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; known in {where or 'top level'}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = from_dict(kind, value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, f"{where}{name}")
    return cls(**kwargs)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _coerce(value, kind, where: str):
    """Check a scalar against its annotation; YAML's 1e-3 (a string in YAML 1.1) becomes a float."""
    origin = typing.get_origin(kind)
    options = typing.get_args(kind) if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) else (kind,)
    if value is None and type(None) in options:
        return None
    for option in options:
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                continue
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (str, bool, list, dict) and isinstance(value, base):
            return value
    raise ConfigError(f"{where}: {value!r} is not a {kind}")


def _set_path(values: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    values[keys[-1]] = value
