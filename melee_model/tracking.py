"""Where a training run's figures go: wandb (through Accelerate's tracker), OUTPUT/metrics.jsonl and
the progress bar. The keys are metrics.py's (the reference's names, "val_" for validation), plus
"lr" (the learning rate of the last optimizer step), "examples_per_s" and "epoch".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from accelerate import Accelerator

from melee_model.config import ExperimentConfig, to_dict

# The progress bar's training figures: its label -> the metric key (labels say they are training's).
BAR_FIGURES = {"loss": "loss/total", "train_change_acc": "metric/change_acc_both"}


def start_trackers(accelerator: Accelerator, config: ExperimentConfig, output_dir: Path, run_id: str | None) -> str | None:
    """Start wandb (offline when there is no login) and return the run id; a resumed run passes its
    own id so that wandb continues the same run. With wandb off, `run_id` comes back unchanged."""
    wandb = config.wandb
    if not wandb.enabled:
        return run_id
    mode = wandb.mode if wandb.mode != "auto" else ("online" if _wandb_logged_in() else "offline")
    run_id = run_id or f"{config.name[:40]}-{int(time.time())}-{os.getpid() % 10000}"
    init = {"name": config.name, "id": run_id, "resume": "allow", "mode": mode, "dir": str(output_dir), "tags": wandb.tags}
    if wandb.entity:
        init["entity"] = wandb.entity
    accelerator.init_trackers(wandb.project, config=to_dict(config), init_kwargs={"wandb": init})
    return run_id


def append_metrics(path: Path, record: dict) -> None:
    """One JSON object per line (NaN written as NaN)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record, allow_nan=True) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint a run resumes from: they will be logged again."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def progress_bar(enabled: bool, total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, disable=not enabled)


def bar_postfix(metrics: dict, rate: float) -> dict:
    """The progress bar's figures of one training log: loss, training change_acc, examples/s."""
    figures = {label: f"{metrics[key]:.4f}" if key.startswith("loss/") else f"{metrics[key]:.3f}" for label, key in BAR_FIGURES.items()}
    return {**figures, "ex_s": f"{rate:,.0f}"}


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()
