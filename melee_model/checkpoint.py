"""Checkpoints: atomic directories holding everything needed to continue a run exactly.

    OUTPUT/checkpoints/step-00001234/
        model.pt        the model's state dict (unwrapped)
        optimizer.pt    the optimizer's state dict
        ranks.pt        per rank: torch (and CUDA) RNG state, unlogged metric sums, escape-hatch state
        state.json      step, epoch, batch in epoch, best val loss, scheduler state, configs,
                        the store's fingerprint, the float errors' divisors (loss.float_weighting
                        "target_std"), the wandb run id
    OUTPUT/latest, OUTPUT/best      symlinks to a checkpoint directory

A checkpoint is written to a temporary directory and renamed into place, then the symlink is
swapped with an atomic rename, so a crash never leaves a half-written `latest`. Loading reads
tensors with `torch.load(weights_only=True)` and the rest from JSON: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from melee_encode import Store
from melee_encode.errors import MeleeError

STATE_FILE = "state.json"


class CheckpointError(MeleeError, ValueError):
    """A checkpoint that cannot be used as asked; the message says why."""


def store_fingerprint(store: Store, rows: np.ndarray) -> dict:
    """What makes two stores interchangeable for a run: encoding, schema and the selected games
    (`rows` of the per-game table)."""
    selected = sorted(store.games["hash"][rows].tolist())
    return {
        "path": store.path,
        "encoding": store.config.to_dict(),
        "schema": hashlib.sha256(json.dumps(store.schema.to_dict(), sort_keys=True).encode()).hexdigest()[:16],
        "games": len(selected),
        "selection": hashlib.sha256("".join(selected).encode()).hexdigest()[:16],
    }


def save_checkpoint(
    output_dir: str | Path, step: int, *, model: dict, optimizer: dict, ranks: list[dict], state: dict, links: tuple[str, ...] = ("latest",)
) -> Path:
    """Write checkpoint `step-{step}` and point each of `links` ("latest", "best") at it."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    staging = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    torch.save(model, staging / "model.pt")
    torch.save(optimizer, staging / "optimizer.pt")
    torch.save(ranks, staging / "ranks.pt")
    (staging / STATE_FILE).write_text(json.dumps(state, indent=1))
    if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
        shutil.rmtree(final)
    os.rename(staging, final)
    for link in links:
        _point(Path(output_dir) / link, final)
    _prune(root, keep={link.resolve() for link in Path(output_dir).iterdir() if link.is_symlink() and link.exists()})
    return final


def load_checkpoint(path: str | Path) -> tuple[dict, dict, list[dict], dict]:
    """(model state, optimizer state, per-rank states, state dict) of a checkpoint directory or link."""
    state = read_state(path)
    return load_weights(path), _load(path, "optimizer.pt"), _load(path, "ranks.pt"), state


def load_weights(path: str | Path) -> dict:
    """Only the model's state dict (what evaluation needs; the optimizer's state is twice its size)."""
    read_state(path)  # a clear error when `path` is no checkpoint
    return _load(path, "model.pt")


def read_state(path: str | Path) -> dict:
    """Only the JSON state of a checkpoint (configs, step, store fingerprint)."""
    directory = Path(path).resolve()
    if not (directory / STATE_FILE).is_file():
        raise CheckpointError(f"{path} is not a checkpoint (no {STATE_FILE})")
    return json.loads((directory / STATE_FILE).read_text())


def _load(path: str | Path, name: str):
    return torch.load(Path(path).resolve() / name, map_location="cpu", weights_only=True)


def _point(link: Path, target: Path) -> None:
    staging = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if staging.is_symlink():
        staging.unlink()
    staging.symlink_to(os.path.relpath(target, link.parent))
    os.replace(staging, link)  # atomic: readers see the old or the new checkpoint, never none


def _prune(root: Path, keep: set[Path]) -> None:
    """Remove checkpoints no link points to."""
    for directory in root.glob("step-*"):
        if directory.resolve() not in keep:
            shutil.rmtree(directory, ignore_errors=True)
