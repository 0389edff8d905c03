"""Run plans: the run card's planning tables computed from a store and an experiment config.

Every figure that follows from the store and the config is exact: games and frames are the store's,
the split and filters are the data pipeline's own (`ExampleSource`), batches per epoch are its epoch
plan's, the parameter count is the built model's. Time and cost follow from a measured step time
(ms per batch of `data.batch_size` on one GPU, e.g. benchmarks/train_step.py's "step_ms") and a
price per GPU-hour; they cover training steps only, not validation or encoding.

The sequence objective (data.objective "sequence") plans windows: "train_examples" counts the
windows of an epoch, "train_targets" their target positions (each target frame once), and a batch is
data.batch_size windows of up to seq_len - warmup targets each.

Memory: the reference held every encoded frame in RAM (float32 floats + int64 ints, ~520 GB at
65K games). Here each loader worker holds one group of decoded chunks and a few batches; the plan
estimates both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from melee_encode.errors import ConfigError
from melee_model.config import DataConfig, ExperimentConfig
from melee_model.examples import PREFETCH_FACTOR, ExampleSource
from melee_model.layout import FrameLayout
from melee_model.model import build_model, count_parameters
from melee_model.sampler import items_of

MS_PER_HOUR = 3_600_000
# Bytes per frame in the reference's RAM: float32 floats and int64 ints.
REFERENCE_FLOAT_BYTES, REFERENCE_INT_BYTES = 4, 8


def plan_run(
    config: ExperimentConfig,
    store_path: str,
    gpus: int = 1,
    step_ms: float | None = None,
    gpu_hour_usd: float = 3.0,
    storage_options: dict | None = None,
) -> dict:
    """The plan's figures, as one flat dict (see plan_markdown for what each means)."""
    if gpus < 1:
        raise ConfigError(f"gpus must be at least 1, got {gpus}")
    source = ExampleSource.for_experiment(store_path, config, storage_options)
    store, layout = source.store, source.layout
    model = build_model(config.model, layout)
    data, train = config.data, config.train
    plan = {
        "config": config.name,
        "store": store_path,
        "games": store.n_games,
        "frames": store.n_frames,
        "train_games": len(source.rows["train"]),
        "val_games": len(source.rows["val"]),
        "selected_frames": int(np.sum(store.games["length"][source.rows_of("all")])),
        "train_examples": source.example_count("train"),
        "val_examples": source.example_count("val"),
        "train_targets": source.target_count("train"),
        "val_targets": source.target_count("val"),
        "float_dims": layout.n_float,
        "int_dims": layout.n_int,
        "embedded_dims": model.embed.out_dim,
        "ctrl_dim": layout.ctrl_dim,
        "arch": config.model.arch,
        "parameters": count_parameters(model),
        "gpus": gpus,
        "epochs": train.epochs,
        "objective": data.objective,
        "batch_size": data.batch_size,
        "targets_per_batch": data.batch_size * (data.seq_len - data.warmup) if data.objective == "sequence" else data.batch_size,
        "grad_accum": train.grad_accum,
        **batch_counts(source, gpus, train.epochs, train.grad_accum, train.max_steps),
        "log_interval": train.log_interval,
        "checkpoint_every": train.checkpoint_every,
        **memory(store.chunk_frames, layout, data, gpus, store.n_frames),
    }
    plan["logs_per_epoch"] = plan["updates_per_epoch"] // train.log_interval if train.log_interval else 0
    if step_ms is not None:
        plan.update(timing(plan, step_ms, gpu_hour_usd))
    return plan


def batch_counts(source: ExampleSource, gpus: int, epochs: int, grad_accum: int, max_steps: int | None) -> dict:
    """Batches per epoch (per GPU, and summed over GPUs) and optimizer updates, as the trainer counts them."""
    per_gpu = source.plan("train", 0, world=gpus).batches_per_rank
    per_epoch = math.ceil(per_gpu / grad_accum)
    total = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    return {
        "batches_per_epoch": per_gpu,
        "batches_per_epoch_total": source.plan("train", 0, world=1).batches_per_rank,
        "val_batches_per_epoch": source.plan("val", 0, world=gpus).batches_per_rank,
        "updates_per_epoch": per_epoch,
        "total_updates": total,
        # Micro-batches each GPU runs in the whole run; what the step time multiplies.
        "total_batches": min(epochs * per_gpu, total * grad_accum),
    }


def memory(chunk_frames: int, layout: FrameLayout, data: DataConfig, gpus: int, frames: int) -> dict:
    """Estimated RAM of the loaders, in bytes, next to the reference's (every frame in RAM)."""
    frame_bytes = layout.n_float * 4 + layout.n_int * 2  # float32 + int16, as the loader decodes them
    items = items_of(data)
    piece_frames = data.piece_frames or chunk_frames
    pool = data.pieces_per_group * (piece_frames + items.before + items.after) * frame_bytes  # one decoded group
    decode = data.decode_threads * chunk_frames * frame_bytes if data.objective == "last" else 0  # GroupReader's scratch
    if data.objective == "last":
        item = layout.context_len * frame_bytes + 4 * (layout.ctrl_dim + layout.float_target_dim) + 2 * layout.int_target_dim + 8
    else:
        item = (data.seq_len + 1) * frame_bytes + data.seq_len + 8
    batch = data.batch_size * item
    loaders = max(1, data.num_workers)
    in_flight = PREFETCH_FACTOR * data.num_workers if data.num_workers else 1
    per_gpu = loaders * (pool + decode) + in_flight * batch
    return {
        "bytes_per_frame": frame_bytes,
        "chunk_frames": chunk_frames,
        "piece_frames": piece_frames,
        "pieces_per_group": data.pieces_per_group,
        "loader_pool_bytes": pool,
        "loader_bytes": pool + decode,
        "batch_bytes": batch,
        "loaders_per_gpu": loaders,
        "batches_in_flight": in_flight,
        "ram_bytes_per_gpu": per_gpu,
        "ram_bytes": gpus * per_gpu,
        "reference_ram_bytes": frames * (layout.n_float * REFERENCE_FLOAT_BYTES + layout.n_int * REFERENCE_INT_BYTES),
    }


def timing(plan: dict, step_ms: float, gpu_hour_usd: float) -> dict:
    """Time per epoch, total time and cost from the ms one GPU takes per batch."""
    if not step_ms > 0:  # NaN too: a benchmark without a GPU may report one
        raise ConfigError(f"the step time must be positive, got {step_ms} ms")
    total_hours = plan["total_batches"] * step_ms / MS_PER_HOUR
    return {
        "step_ms": step_ms,
        "epoch_hours": plan["batches_per_epoch"] * step_ms / MS_PER_HOUR,
        "total_hours": total_hours,
        "log_seconds": plan["log_interval"] * plan["grad_accum"] * step_ms / 1000,
        "gpu_hour_usd": gpu_hour_usd,
        "gpu_hours": total_hours * plan["gpus"],
        "cost_usd": total_hours * plan["gpus"] * gpu_hour_usd,
    }


def read_step_ms(path: str | Path) -> float:
    """The "step_ms" of a benchmark's JSON output (benchmarks/train_step.py --json)."""
    try:
        values = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not JSON: {error}") from error
    if not isinstance(values, dict) or not isinstance(values.get("step_ms"), (int, float)):
        raise ConfigError(f'{path} has no numeric "step_ms"')
    return float(values["step_ms"])


def plan_markdown(plan: dict, config: ExperimentConfig) -> str:
    """The plan as Markdown tables, in the run card's sections."""
    model, train, sampling = config.model, config.train, config.train.scheduled_sampling
    sequence = plan["objective"] == "sequence"
    sections = {
        "Data": [
            ("Store", f"`{plan['store']}`"),
            ("Games in store", _n(plan["games"])),
            ("Selected (filters: " + _filters(config) + ")", f"{_n(plan['train_games'])} train / {_n(plan['val_games'])} val"),
            ("Frames in store", _n(plan["frames"])),
            ("Frames selected", _n(plan["selected_frames"])),
            ("Train examples", _n(plan["train_examples"]) + (f" windows, {_n(plan['train_targets'])} targets" if sequence else "")),
            ("Val examples", _n(plan["val_examples"]) + (f" windows, {_n(plan['val_targets'])} targets" if sequence else "")),
            ("Float dims/frame", str(plan["float_dims"])),
            ("Int dims/frame", str(plan["int_dims"])),
        ],
        "Model": [
            ("Architecture", plan["arch"]),
            ("Parameters", _n(plan["parameters"])),
            *(
                [
                    ("d_model", str(model.d_model)),
                    ("n_layers", str(model.n_layers)),
                    ("d_state", str(model.d_state)),
                    ("headdim", str(model.headdim)),
                    ("chunk_size (SSD)", str(model.chunk_size)),
                ]
                if model.arch == "mamba2"
                else [("hidden", str(model.mlp_hidden))]
            ),
            (
                "Objective",
                f"sequence: windows of {config.data.seq_len} positions, warm-up {config.data.warmup}"
                if sequence
                else f"last: context_len (K) {config.data.context_len}",
            ),
            ("Embedded frame", str(plan["embedded_dims"])),
            ("next_ctrl", str(plan["ctrl_dim"])),
        ],
        "Training": [
            ("GPUs", str(plan["gpus"])),
            ("Epochs", str(plan["epochs"])),
            (
                "Batch size (per GPU)",
                _n(plan["batch_size"]) + (f" windows, up to {_n(plan['targets_per_batch'])} targets" if sequence else ""),
            ),
            ("Gradient accumulation", str(plan["grad_accum"])),
            ("Learning rate", f"{train.lr:g} (cosine {train.lr_schedule.replace('_', ' ')})"),
            ("Weight decay", f"{train.weight_decay:g} ({'every parameter' if train.weight_decay_all else 'matrices and embeddings'})"),
            ("Precision", {"auto": "bf16 autocast on GPUs", "no": "fp32"}.get(train.mixed_precision, train.mixed_precision)),
            (
                "Scheduled sampling",
                f"{sampling.mode} {sampling.rate:g} (noise={sampling.noise:g}, anneal={sampling.anneal_epochs} epochs, corrupt={sampling.frames} frames, {sampling.targets} targets)",
            ),
            *(
                [("Unrolled training", f"{train.unroll.frames} frames per window, weight {train.unroll.weight:g}")]
                if train.unroll.frames
                else []
            ),
            ("Optimizer updates per epoch", _n(plan["updates_per_epoch"])),
            ("Total optimizer updates", _n(plan["total_updates"]) + (f" (train.max_steps {train.max_steps})" if train.max_steps else "")),
        ],
        "Logging & Monitoring": [
            ("Batches per epoch (total)", _n(plan["batches_per_epoch_total"])),
            ("Batches per GPU per epoch", _n(plan["batches_per_epoch"])),
            ("Val batches per GPU", _n(plan["val_batches_per_epoch"])),
            ("log_interval", f"{_n(plan['log_interval'])} steps"),
            ("Logs per epoch", f"~{_n(plan['logs_per_epoch'])}"),
            *([("Time between logs", f"~{plan['log_seconds']:.0f}s ({plan['log_seconds'] / 60:.1f} min)")] if "step_ms" in plan else []),
            ("checkpoint_every", f"{_n(plan['checkpoint_every'])} steps, and every epoch" if plan["checkpoint_every"] else "every epoch"),
        ],
        "Timing & Cost": [
            ("Batch time (per GPU)", f"{plan['step_ms']:g} ms"),
            ("Epoch time", f"{plan['epoch_hours']:.2f} h ({plan['epoch_hours'] * 60:.0f} min)"),
            ("Total training", f"{plan['total_hours']:.2f} h"),
            ("GPU-hours", f"{plan['gpu_hours']:.2f}"),
            ("Cost", f"${plan['cost_usd']:,.2f} at ${plan['gpu_hour_usd']:g}/GPU-hour (training steps only)"),
        ]
        if "step_ms" in plan
        else [("Batch time", "unknown: pass --step-ms or --step-json (benchmarks/train_step.py --json)")],
        "Memory": [
            ("Bytes per frame (float32 + int16)", str(plan["bytes_per_frame"])),
            (
                "Decoded group per loader",
                f"{plan['pieces_per_group']} pieces x {_n(plan['piece_frames'])} frames x {plan['bytes_per_frame']} B = {_bytes(plan['loader_pool_bytes'])}",
            ),
            ("Per loader with decode buffers", _bytes(plan["loader_bytes"])),
            ("Batch", _bytes(plan["batch_bytes"])),
            (
                "Per GPU",
                f"{_bytes(plan['ram_bytes_per_gpu'])} ({plan['loaders_per_gpu']} loader(s), {plan['batches_in_flight']} batch(es) in flight)",
            ),
            ("All GPUs", _bytes(plan["ram_bytes"])),
            ("Reference (every frame in RAM, float32 + int64)", _bytes(plan["reference_ram_bytes"])),
        ],
    }
    lines = [f"# Run plan: {plan['config']}", ""]
    for title, rows in sections.items():
        lines += [f"## {title}", "", "| Field | Value |", "|-------|-------|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        lines.append("")
    return "\n".join(lines)


def _filters(config: ExperimentConfig) -> str:
    data = config.data
    parts = [
        f"{name} {values}"
        for name, values in (("end methods", data.end_methods), ("stages", data.stages), ("characters", data.characters))
        if values
    ]
    parts.append(f"require_fields {data.require_fields}")
    return ", ".join(parts)


def _n(value: int) -> str:
    return f"{value:,}"


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
