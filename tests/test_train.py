"""Training end to end: 2 CPU ranks through torchrun, exact resume, checkpoints, escape hatches, configs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from melee_model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from melee_model.config import ExperimentConfig, load_config
from melee_model.hatches import StopTraining, patience_verdict, track_patience
from melee_model.optim import cosine_schedule
from melee_model.train import Trainer

from conftest import ROOT
from servers import free_port

TINY = str(ROOT / "experiments" / "tiny.yaml")


def torchrun_train(store: str, output: Path, *options: str) -> subprocess.CompletedProcess:
    """scripts/train.py on 2 CPU ranks, the way the README documents it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(ROOT / "scripts" / "train.py"), "--config", TINY, "--store", store, "--output-dir", str(output),
               "--no-progress", "--set", "wandb.mode=offline", *options]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "WANDB_SILENT": "true"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_run(shared_store, tmp_path_factory) -> Path:
    """The tiny config trained for 2 epochs on 2 CPU ranks (shared with the evaluation tests)."""
    output = tmp_path_factory.mktemp("runs") / "tiny"
    torchrun_train(shared_store, output)
    return output


@pytest.mark.slow
def test_two_ranks_learn(tiny_run):
    lines = metrics(tiny_run)
    val = [line for line in lines if "val_loss/total" in line]
    assert [line["step"] for line in val] == [0, 133, 266]  # before training, then each epoch
    assert val[-1]["val_loss/total"] < 0.3 * val[0]["val_loss/total"]
    assert val[-1]["val_change_acc"] > val[0]["val_change_acc"]
    train = [line for line in lines if "loss/total" in line]
    assert [line["step"] for line in train] == list(range(25, 251, 25))
    assert all({"epoch", "lr", "examples_per_s", "metric/change_acc", "metric/pos_mae"} <= line.keys() for line in train)
    assert train[-1]["loss/total"] < 0.2 * train[0]["loss/total"]
    assert (tiny_run / "latest").resolve() == (tiny_run / "checkpoints" / "step-00000266").resolve()
    assert (tiny_run / "best").is_symlink() and list((tiny_run / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_resume_continues_exactly(shared_store, tiny_run, tmp_path):
    output = tmp_path / "interrupted"
    stopped = torchrun_train(shared_store, output, "--set", "train.max_steps=180")  # mid-epoch 2
    assert "stopped: reached train.max_steps=180" in stopped.stdout
    resumed = torchrun_train(shared_store, output, "--resume", str(output / "latest"))
    assert "resumed from" in resumed.stdout and "at step 180 (epoch 1, batch 47)" in resumed.stdout
    uninterrupted, continued = metrics(tiny_run), metrics(output)
    drop = lambda line: {k: v for k, v in line.items() if k != "examples_per_s"}  # noqa: E731 (timing)
    assert [drop(line) for line in continued] == [drop(line) for line in uninterrupted]


@pytest.mark.slow
def test_resume_on_another_store_is_refused(shared_store, tiny_run, tmp_path):
    config = load_config(TINY, ["wandb.enabled=false", "data.end_methods=[game]"])
    with pytest.raises(CheckpointError, match="another store or selection"):
        Trainer(config, shared_store, output_dir=str(tmp_path), resume=str(tiny_run / "latest"), progress_bar=False)


def _quick_trainer(store: str, tmp_path: Path, *overrides: str) -> Trainer:
    config = load_config(TINY, ["wandb.enabled=false", "train.eval_at_start=false", "data.batch_size=256", *overrides])
    return Trainer(config, store, output_dir=str(tmp_path), progress_bar=False)


def test_nonfinite_loss_stops_with_a_checkpoint(shared_store, tmp_path):
    trainer = _quick_trainer(shared_store, tmp_path, "train.lr=1e30", "train.warmup_steps=0", "train.check_every=5", "train.grad_clip=1e30")
    trainer.fit()
    assert "NaN or inf" in trainer.progress.stop_reason
    assert (tmp_path / "nonfinite").is_symlink() and (tmp_path / "latest").is_symlink()


def test_patience_counts_batches_since_the_best_window():
    best, since, verdicts = math.inf, 0, []
    for loss in (2.0, 1.5, 1.6, 1.5, 1.4999999, 1.2):  # windows of 50 batches
        best, since = track_patience(best, since, loss, 50)
        verdicts.append((best, since, patience_verdict(best, since, patience=100)))
    assert [(b, s) for b, s, _ in verdicts] == [(2.0, 0), (1.5, 0), (1.5, 50), (1.5, 100), (1.5, 150), (1.2, 0)]
    assert [v is not None for _, _, v in verdicts] == [False, False, False, True, True, False]
    assert verdicts[3][2] == "the training loss has not improved on 1.5000 for 100 batches (train.patience_batches)"
    assert patience_verdict(1.5, 10**9, patience=0) is None  # 0: never


def test_the_trainer_stops_when_the_loss_stalls(shared_store, tmp_path):
    trainer = _quick_trainer(shared_store, tmp_path, "train.patience_batches=100")
    for loss in (2.0, 1.5, 1.6):  # windows of 50 batches: improves, then stalls for 50
        trainer.window.copy_(torch.tensor([loss * 50, 50, 0], dtype=torch.float64))
        trainer._check_window()
    trainer.window.copy_(torch.tensor([1.5 * 50, 50, 0], dtype=torch.float64))
    with pytest.raises(StopTraining, match="has not improved on 1.5000 for 100 batches"):
        trainer._check_window()


def test_low_change_acc_after_the_first_epoch_stops(shared_store, tmp_path):
    trainer = _quick_trainer(shared_store, tmp_path, "train.min_val_change_acc=0.6")
    trainer.progress.epoch = 1  # fit() counts the epoch before checking
    trainer._check_change_acc({"val_change_acc": 0.61})
    with pytest.raises(StopTraining, match="val_change_acc 0.590 is under 0.6 after the first epoch"):
        trainer._check_change_acc({"val_change_acc": 0.59})
    trainer.progress.epoch = 2  # only after the first epoch
    trainer._check_change_acc({"val_change_acc": 0.1})


def test_cosine_schedule():
    multiplier = cosine_schedule(total=100, warmup=10, floor=0.1)
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0) and multiplier(55) == pytest.approx(0.55)
    assert multiplier(100) == pytest.approx(0.1) and multiplier(500) == pytest.approx(0.1)


def test_checkpoints_are_atomic_links_and_load_without_pickle(tmp_path):
    state = {"progress": {"step": 1}, "config": {}, "store": {}}
    first = save_checkpoint(tmp_path, 1, model={"w": torch.ones(2)}, optimizer={}, ranks=[{"rng_cpu": torch.get_rng_state()}], state=state, links=("latest", "best"))
    second = save_checkpoint(tmp_path, 2, model={"w": torch.zeros(2)}, optimizer={}, ranks=[{}], state=state)
    assert (tmp_path / "latest").resolve() == second and (tmp_path / "best").resolve() == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    save_checkpoint(tmp_path, 3, model={}, optimizer={}, ranks=[{}], state=state, links=("latest", "best"))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]  # unreferenced ones pruned
    model, _, _, loaded = load_checkpoint(tmp_path / "latest")
    assert loaded == state

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"evil": Payload()}, tmp_path / "checkpoints" / "step-00000003" / "ranks.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(tmp_path / "latest")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_config_files_and_overrides():
    card = load_config(ROOT / "experiments" / "mamba2-v3-65k-ranked.yaml")
    assert (card.model.d_model, card.model.n_layers, card.model.d_state, card.model.headdim) == (384, 4, 64, 64)
    assert (card.train.lr, card.train.weight_decay, card.data.batch_size, card.train.epochs) == (5e-4, 1e-5, 4096, 2)
    assert card.train.scheduled_sampling.rate == 0.3 and card.loss.action == 2.0 and card.data.end_methods == ["game"]
    assert isinstance(load_config(TINY), ExperimentConfig)
    tweaked = load_config(TINY, ["train.lr=1e-3", "model.arch=mlp", "train.max_steps=7"])
    assert (tweaked.train.lr, tweaked.model.arch, tweaked.train.max_steps) == (1e-3, "mlp", 7)
    with pytest.raises(ValueError, match="unknown config key.*train.lrate"):
        load_config(TINY, ["train.lrate=1"])
    with pytest.raises(ValueError, match="unknown config key.*modle"):
        load_config(None, ["modle.arch=mlp"])
    with pytest.raises(ValueError, match="train.epochs: 'two' is not"):
        load_config(TINY, ["train.epochs=two"])
