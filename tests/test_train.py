"""Training end to end: 2 CPU ranks through torchrun, exact resume, checkpoints, escape hatches, configs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from melee_encode.config import EncodingConfig
from melee_model.checkpoint import CheckpointError, load_checkpoint, read_state, save_checkpoint
from melee_model.config import ExperimentConfig, ModelConfig, ScheduledSamplingConfig, TrainConfig, load_config, to_dict
from melee_model.examples import ExampleSource
from melee_model.hatches import StopTraining, patience_verdict, track_patience
from melee_model.layout import FrameLayout
from melee_model.model import build_model
from melee_model.optim import adamw, cosine_schedule, lr_multiplier
from melee_model.scheduled_sampling import ContextNoise
from melee_model.tracking import bar_postfix
from melee_model.train import Trainer

from conftest import ROOT
from servers import free_port

TINY = str(ROOT / "experiments" / "tiny.yaml")
CARD = ROOT / "experiments" / "mamba2-v3-65k-ranked.yaml"
REFERENCE = ROOT / "experiments" / "mamba2-v3-65k-ranked-reference.yaml"


def torchrun_train(store: str, output: Path, *options: str, config: str = TINY) -> subprocess.CompletedProcess:
    """scripts/train.py on 2 CPU ranks, the way the README documents it."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(ROOT / "scripts" / "train.py"),
        "--config",
        config,
        "--store",
        store,
        "--output-dir",
        str(output),
        "--no-progress",
        "--set",
        "wandb.mode=offline",
        *options,
    ]
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


def tiny_epoch_updates(store: str) -> int:
    """Optimizer steps per epoch of the tiny config on 2 ranks: the data pipeline's own count."""
    return ExampleSource.for_experiment(store, load_config(TINY)).plan("train", 0, world=2).batches_per_rank


@pytest.mark.slow
def test_two_ranks_learn(shared_store, tiny_run):
    lines = metrics(tiny_run)
    epoch, total = tiny_epoch_updates(shared_store), 2 * tiny_epoch_updates(shared_store)
    val = [line for line in lines if "val_loss/total" in line]
    assert [line["step"] for line in val] == [0, epoch, total]  # before training, then each epoch
    assert val[-1]["val_loss/total"] < 0.3 * val[0]["val_loss/total"]
    assert val[-1]["val_metric/change_acc_both"] > val[0]["val_metric/change_acc_both"]
    train = [line for line in lines if "loss/total" in line]
    assert [line["step"] for line in train] == list(range(25, total + 1, 25))
    assert all(
        {"epoch", "lr", "examples_per_s", "metric/action_change_acc", "metric/change_acc_both", "metric/position_mae"} <= line.keys()
        for line in train
    )
    # The default schedule: 20 warmup steps, then a cosine per step over the run (lr of the step just taken).
    assert [line["lr"] for line in train[:2]] == pytest.approx([3e-3 * cosine_schedule(total, 20, 0.0)(s - 1) for s in (25, 50)])
    assert train[-1]["loss/total"] < 0.2 * train[0]["loss/total"]
    assert (tiny_run / "latest").resolve() == (tiny_run / "checkpoints" / f"step-{total:08d}").resolve()
    assert (tiny_run / "best").is_symlink() and list((tiny_run / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_resume_continues_exactly(shared_store, tiny_run, tmp_path):
    """Stopped a few batches into the run and resumed for two log lines more: the same lines, step
    for step, as the uninterrupted tiny run's up to there (max_steps does not change the lr schedule).
    A resume in a later epoch: the reference config's tiny run below and the sequence objective's."""
    stop, end = 15, 65
    output = tmp_path / "interrupted"
    stopped = torchrun_train(shared_store, output, "--set", f"train.max_steps={stop}")
    assert f"stopped: reached train.max_steps={stop}" in stopped.stdout
    resumed = torchrun_train(shared_store, output, "--set", f"train.max_steps={end}", "--resume", str(output / "latest"))
    assert "resumed from" in resumed.stdout and f"at step {stop} (epoch 0, batch 15)" in resumed.stdout
    drop = lambda line: {k: v for k, v in line.items() if k != "examples_per_s"}  # noqa: E731 (timing)
    uninterrupted = [drop(line) for line in metrics(tiny_run) if line["step"] <= end]
    continued = [drop(line) for line in metrics(output)]
    assert continued == uninterrupted and sum(stop < line["step"] <= end for line in continued) == 2


@pytest.mark.slow
def test_resume_on_another_store_is_refused(shared_store, tiny_run, tmp_path):
    config = load_config(TINY, ["wandb.enabled=false", "data.end_methods=[game]"])
    with pytest.raises(CheckpointError, match="another store or selection"):
        Trainer(config, shared_store, output_dir=str(tmp_path), resume=str(tiny_run / "latest"), progress_bar=False)


def _quick_trainer(store: str, tmp_path: Path, *overrides: str) -> Trainer:
    config = load_config(TINY, ["wandb.enabled=false", "train.eval_at_start=false", "data.batch_size=256", *overrides])
    return Trainer(config, store, output_dir=str(tmp_path), progress_bar=False)


@pytest.mark.parametrize("weighting", ["encoded", "target_std"])
def test_a_checkpoint_keeps_the_float_errors_divisors(shared_store, tmp_path, weighting):
    trainer = _quick_trainer(shared_store, tmp_path, f"loss.float_weighting={weighting}", "train.max_steps=1", "train.val_batches=1")
    trainer.fit()
    kept = read_state(tmp_path / "latest")["float_scale"]
    if weighting == "encoded":
        assert kept is None and trainer.float_scale is None
    else:
        assert kept == trainer.float_scale.tolist() and len(kept) == trainer.layout.float_target_dim
        state = json.loads((tmp_path / "latest" / "state.json").read_text())
        state["float_scale"] = [2 * v for v in kept]  # a resumed run divides by what it kept, not by the store's spreads again
        (tmp_path / "latest" / "state.json").write_text(json.dumps(state))
        resumed = Trainer(trainer.config, shared_store, output_dir=str(tmp_path), resume=str(tmp_path / "latest"), progress_bar=False)
        assert resumed.float_scale.tolist() == state["float_scale"]


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
    trainer._check_change_acc({"val_metric/action_change_acc": 0.61, "val_metric/change_acc_both": 0.1})
    # The card's kill threshold is on the p0-only figure, whatever the both-player one says.
    with pytest.raises(StopTraining, match="val_metric/action_change_acc 0.590 is under 0.6 after the first epoch"):
        trainer._check_change_acc({"val_metric/action_change_acc": 0.59, "val_metric/change_acc_both": 0.9})
    trainer.progress.epoch = 2  # only after the first epoch
    trainer._check_change_acc({"val_metric/action_change_acc": 0.1})


def test_every_micro_batch_of_a_step_draws_its_own_noise(shared_store, tmp_path):
    trainer = _quick_trainer(
        shared_store, tmp_path, "train.grad_accum=2", "train.scheduled_sampling.rate=1.0", "train.scheduled_sampling.anneal_epochs=1"
    )
    clean = next(iter(trainer.source.loader("train", 1)))

    def noise_of(micro: int, step: int = 0) -> torch.Tensor:
        batch = {key: value.clone() for key, value in clean.items()}
        trainer.progress.step = step
        trainer._micro_step(batch, epoch=1, sync=False, micro=micro)
        return batch["float_ctx"] - clean["float_ctx"]  # (B, K, F)

    first, second = noise_of(0), noise_of(1)
    assert first.abs().sum() > 0 and second.abs().sum() > 0
    assert not torch.equal(first, second)  # the two micro-batches of step 0 differ
    assert torch.equal(first, noise_of(0))  # and each is a pure function of (seed, step, micro-batch, rank)
    assert not torch.equal(first, noise_of(0, step=1))


def test_noisy_targets_are_relative_to_the_noised_last_frame():
    layout = FrameLayout(EncodingConfig().schema(), context_len=4)
    batch = {"float_ctx": torch.zeros(8, 4, layout.n_float), "float_tgt": torch.ones(8, layout.float_target_dim)}
    config = ScheduledSamplingConfig(rate=1.0, noise=0.1, anneal_epochs=1, frames=3, targets="noisy")
    noise = ContextNoise(layout, config, "cpu")
    noise.apply(batch, epoch=1, generator=torch.Generator().manual_seed(0))
    last = batch["float_ctx"][:, -1]  # (B, F): the noise itself, the context being zeros
    assert batch["float_ctx"][:, 0].abs().sum() == 0 and last.abs().sum() > 0  # the last 3 frames only
    deltas = list(layout.delta_target_positions)
    assert torch.equal(batch["float_tgt"][:, deltas], 1 - last[:, list(layout.delta_target_columns)])
    absolute = [j for j in range(layout.float_target_dim) if not layout.float_target_is_delta[j]]
    assert (batch["float_tgt"][:, absolute] == 1).all()
    clean = {"float_ctx": torch.zeros(8, 4, layout.n_float), "float_tgt": torch.ones(8, layout.float_target_dim)}
    ContextNoise(layout, ScheduledSamplingConfig(rate=1.0, anneal_epochs=1), "cpu").apply(clean, 1, torch.Generator().manual_seed(0))
    assert torch.equal(clean["float_ctx"], batch["float_ctx"]) and (clean["float_tgt"] == 1).all()  # the card's: targets untouched
    with pytest.raises(ValueError, match="targets must be one of"):
        ContextNoise(layout, ScheduledSamplingConfig(targets="both"), "cpu")
    with pytest.raises(ValueError, match="needs deltas from the last context frame"):
        ContextNoise(FrameLayout(layout.schema, lookahead=2, lookahead_delta="from_previous"), config, "cpu")


def test_per_epoch_schedule_is_the_reference_s_cosine_annealing():
    per_epoch = lr_multiplier(TrainConfig(epochs=2, lr_schedule="per_epoch"), updates_per_epoch=125)
    assert [per_epoch(s) for s in (0, 124, 125, 249)] == [1.0, 1.0, 0.5, 0.5]  # lr 5e-4, then 2.5e-4
    four = lr_multiplier(TrainConfig(epochs=4, lr_schedule="per_epoch"), updates_per_epoch=10)
    assert [four(s) for s in (0, 10, 20, 39)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)  # (1 + cos(pi e / 4)) / 2
    per_step = lr_multiplier(TrainConfig(epochs=2), updates_per_epoch=125)
    assert per_step(125) == pytest.approx(0.5) and per_step(62) == pytest.approx(0.5 * (1 + math.cos(math.pi * 62 / 250)))
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        lr_multiplier(TrainConfig(lr_schedule="per_batch"), 10)


def test_weight_decay_on_every_parameter_or_on_matrices_only():
    model = build_model(ModelConfig(d_model=32, n_layers=1, d_state=8, headdim=16, backend="torch"), FrameLayout(EncodingConfig().schema()))
    everything = adamw(model, 5e-4, 1e-5, decay_all=True)
    assert [g["weight_decay"] for g in everything.param_groups] == [1e-5]
    assert len(everything.param_groups[0]["params"]) == len(list(model.parameters()))
    decayed, spared = adamw(model, 5e-4, 1e-5).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert (decayed["weight_decay"], spared["weight_decay"]) == (1e-5, 0.0)
    assert all(p.dim() >= 2 for p in decayed["params"])  # linear, embedding and conv weights
    spared_names = {names[id(p)].split(".")[-1] for p in spared["params"]}
    assert {"dt_bias", "A_log", "D", "bias"} <= spared_names  # SSM parameters and biases (norm weights too)


@pytest.mark.parametrize("decay_all", [False, True])
def test_the_rollout_age_tables_learn_at_their_own_rate(decay_all):
    """train.unroll.age_lr: the age tables in a group of their own at lr * age_lr, without decay, every
    other parameter as before; at 1 no group of their own."""
    model = build_model(ModelConfig(d_model=32, n_layers=1, d_state=8, headdim=16, rollout_age=4), FrameLayout(EncodingConfig().schema()))
    names = {id(p): n for n, p in model.named_parameters()}
    *rest, aged = adamw(model, 5e-4, 1e-5, decay_all, age_lr=30.0).param_groups
    assert sorted(names[id(p)] for p in aged["params"]) == ["age.motion.weight", "age.table.weight"]
    assert (aged["lr"], aged["weight_decay"]) == (pytest.approx(1.5e-2), 0.0)
    assert all(g["lr"] == 5e-4 and not any(names[id(p)].startswith("age.") for p in g["params"]) for g in rest)
    assert sum(len(g["params"]) for g in rest) == len(names) - 2
    assert len(adamw(model, 5e-4, 1e-5, decay_all).param_groups) == len(rest)


def test_the_progress_bar_labels_the_training_change_acc():
    figures = bar_postfix({"loss/total": 0.5, "metric/change_acc_both": 0.25, "metric/action_change_acc": 0.75}, 1234.0)
    assert figures == {"loss": "0.5000", "train_change_acc": "0.250", "ex_s": "1,234"}


def test_cosine_schedule():
    multiplier = cosine_schedule(total=100, warmup=10, floor=0.1)
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0) and multiplier(55) == pytest.approx(0.55)
    assert multiplier(100) == pytest.approx(0.1) and multiplier(500) == pytest.approx(0.1)


def test_checkpoints_are_atomic_links_and_load_without_pickle(tmp_path):
    state = {"progress": {"step": 1}, "config": {}, "store": {}}
    first = save_checkpoint(
        tmp_path,
        1,
        model={"w": torch.ones(2)},
        optimizer={},
        ranks=[{"rng_cpu": torch.get_rng_state()}],
        state=state,
        links=("latest", "best"),
    )
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


def test_the_reference_config_is_the_card_s_with_the_reference_s_switches():
    card, reference = to_dict(load_config(CARD)), to_dict(load_config(REFERENCE))
    differences = {
        (section, key): reference[section][key]
        for section in card
        if isinstance(card[section], dict)
        for key in card[section]
        if card[section][key] != reference[section][key]
    }
    assert differences == {
        ("data", "lookahead_delta"): "from_previous",
        ("data", "require_fields"): "none",
        ("model", "ssm_init"): "reference",
        ("train", "lr_schedule"): "per_epoch",
        ("train", "weight_decay_all"): True,
        ("train", "mixed_precision"): "no",
    }
    assert reference["train"]["scheduled_sampling"] == card["train"]["scheduled_sampling"]  # the card's variant, clean targets
    assert card["train"]["scheduled_sampling"]["targets"] == "clean"


@pytest.mark.slow
def test_a_tiny_run_of_the_reference_config_logs_the_reference_s_figures(shared_store, tmp_path):
    """The reference config at a tiny size: lr 5e-4 in epoch 1, 2.5e-4 in epoch 2, continued exactly
    across a resume, and the reference's keys in metrics.jsonl."""
    tiny = [
        "model.d_model=64",
        "model.n_layers=2",
        "model.d_state=16",
        "model.headdim=16",
        "data.batch_size=1024",  # with the reference's own filter (end_methods [game]): 14 steps an epoch here
        "data.num_workers=0",
        "train.log_interval=4",
        "train.min_val_change_acc=null",
        "train.patience_batches=0",
    ]
    options = [item for override in tiny for item in ("--set", override)]
    output = tmp_path / "reference"
    torchrun_train(shared_store, output, *options, "--set", "train.max_steps=20", config=str(REFERENCE))  # mid-epoch 2
    resumed = torchrun_train(shared_store, output, *options, "--resume", str(output / "latest"), config=str(REFERENCE))
    assert "at step 20 (epoch 1" in resumed.stdout
    lines = metrics(output)
    per_epoch = {line["step"]: line["lr"] for line in lines if "lr" in line}
    steps_per_epoch = int(lines[-1]["step"]) // 2
    assert per_epoch and all(lr == (5e-4 if step <= steps_per_epoch else 2.5e-4) for step, lr in per_epoch.items())
    assert {5e-4, 2.5e-4} == set(per_epoch.values())
    train = next(line for line in lines if "loss/total" in line)
    assert {
        "loss/total",
        "loss/jumps",
        "loss/hurtbox",
        "loss/last_attack",
        "metric/position_mae",
        "metric/p0_action_acc",
        "metric/action_change_acc",
    } <= train.keys()
    val = [line for line in lines if "val_loss/total" in line]
    assert len(val) == 2 and {"val_metric/action_change_acc", "val_metric/position_mae", "val_action/cat_idle"} <= val[-1].keys()


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
