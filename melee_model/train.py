"""Training: the loop behind `scripts/train.py`, on a CPU, one GPU or many, through HF Accelerate.

One process per device (`accelerate launch`, or `ACCELERATE_USE_CPU=1 torchrun` for CPU ranks). Each
rank reads its own share of every epoch straight from the store (melee_model.examples), so the data
loader is not passed through `accelerator.prepare`. An optimizer step is `grad_accum` micro-batches;
every rank runs the same number of them per epoch (a rank whose share ran out takes a zero-loss step
so that gradients still sync).

Exact resume: the checkpoint holds the model, the optimizer, the scheduler, every rank's RNG and
unlogged metric sums, and the position in the epoch; the data order is a pure function of (seed,
epoch), so a resumed run continues with the batches, learning rates and metrics the uninterrupted
run would have had. `data.objective` says how batches become predictions (melee_model.objective: the
card's K-frame examples, or every position of sequence windows), scheduled sampling included, which
draws its noise per micro-batch (scheduled_sampling.py); by default its delta targets stay relative
to the clean last context frame, as the run card's did. Figures go out through tracking.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator

from melee_model.batches import batch_to_device
from melee_model.checkpoint import CheckpointError, load_checkpoint, read_state, save_checkpoint, store_fingerprint
from melee_model.config import ExperimentConfig, to_dict
from melee_model.examples import ExampleSource
from melee_model.hatches import StopTraining, change_acc_verdict, patience_verdict, track_patience
from melee_model.losses import compute_losses, float_scale
from melee_model.metrics import VAL_PREFIX, MetricAccumulator, score
from melee_model.model import build_model, describe_model
from melee_model.objective import build_objective
from melee_model.optim import adamw, lr_multiplier
from melee_model.scheduled_sampling import micro_batch_seed
from melee_model.tracking import append_metrics, bar_postfix, progress_bar, start_trackers, truncate_metrics
from melee_model.unroll import describe_unroll


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # this epoch's micro-batches already consumed (per rank)
    best_val_loss: float = math.inf
    best_window_loss: float = math.inf
    batches_since_best: int = 0
    stop_reason: str = ""


class Trainer:
    """One training run: set-up, the epochs, evaluation, logging, checkpoints and escape hatches."""

    def __init__(
        self,
        config: ExperimentConfig,
        store: str,
        output_dir: str | None = None,
        resume: str | None = None,
        progress_bar: bool = True,
        storage_options: dict | None = None,
    ):
        self.config = config
        train = config.train
        mixed = train.mixed_precision if train.mixed_precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
        self.accelerator = Accelerator(mixed_precision=mixed, log_with="wandb" if config.wandb.enabled else None)
        self.output_dir = Path(output_dir or Path("runs") / config.name)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device

        self.source = ExampleSource.for_experiment(store, config, storage_options)
        self.layout = self.source.layout
        self.objective = build_objective(config, self.layout, self.device)
        kept = read_state(resume).get("float_scale") if resume else None  # a resumed run divides as it did (None: measure)
        self.float_scale = float_scale(self.layout, config.loss, self.source.float_target_std, self.device, kept)
        torch.manual_seed(train.seed)  # the same initial weights on every rank
        model = build_model(config.model, self.layout)
        self.describe = describe_model(model, self.layout)
        optimizer = adamw(model, train.lr, train.weight_decay, train.weight_decay_all, train.unroll.age_lr)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.batches_per_epoch = self.source.plan("train", 0, self.world).batches_per_rank  # micro-batches per rank
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / train.grad_accum)
        self.total_updates = train.epochs * self.updates_per_epoch
        self.started = time.perf_counter()  # reset as fit() starts: the clock of max_seconds and the "per_second" schedule
        schedule = lr_multiplier(train, self.updates_per_epoch, lambda: time.perf_counter() - self.started)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, schedule)
        self.step_lr = math.nan  # the learning rate of the last optimizer step, logged as "lr"
        torch.manual_seed(train.seed + 1 + self.rank)  # dropout masks differ between ranks
        self.train_metrics = MetricAccumulator(self.layout, self.device)
        self.window = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, batches, non-finite batches
        self.progress = Progress()
        self.fingerprint = store_fingerprint(self.source.store, self.source.rows_of("all"))
        self.wandb_id = None
        if resume:
            self._resume(resume)
        self.show_bar = progress_bar and self.accelerator.is_main_process
        self.wandb_id = start_trackers(self.accelerator, config, self.output_dir, self.wandb_id)

    # ------------------------------------------------------------------ the run

    def fit(self) -> dict:
        """Train to the end (or an escape hatch); return the last validation metrics."""
        self._print(self.describe)
        self._print(
            f"data: {self.source.target_count('train'):,} train / {self.source.target_count('val'):,} val targets; "
            f"{self.batches_per_epoch:,} batches of {self.config.data.batch_size} per rank per epoch, {self.world} rank(s); "
            f"{self.total_updates:,} optimizer steps in {self.config.train.epochs} epochs"
        )
        if self.config.train.unroll.frames:
            self._print(describe_unroll(self.config.train.unroll))
        val, self.started = {}, time.perf_counter()
        if self.config.train.eval_at_start and self.progress.step == 0:
            self._emit({**self.evaluate(), "epoch": 0})
        bar = progress_bar(self.show_bar, self.total_updates, self.progress.step)
        try:
            while self.progress.epoch < self.config.train.epochs:
                self._train_epoch(bar)
                val = self.evaluate()
                self._emit({**val, "epoch": self.progress.epoch + 1})
                self.progress.epoch += 1
                self.progress.batch_in_epoch = 0
                self._save_epoch_checkpoint(val)
                self._check_change_acc(val)
        except StopTraining as stop:
            self.progress.stop_reason = str(stop)
            if not stop.saved:
                self._save(("latest",))
            self._print(f"stopped: {stop}; checkpoint: {self.output_dir / 'latest'}")
        finally:
            bar.close()
            self.accelerator.end_training()
        return val

    def _train_epoch(self, bar) -> None:
        train = self.config.train
        epoch = self.progress.epoch
        loader = self.source.loader("train", epoch, rank=self.rank, world=self.world, start_batch=self.progress.batch_in_epoch)
        batches = iter(loader)
        started, examples = time.perf_counter(), 0
        self.model.train()
        for index in range(self.progress.batch_in_epoch, self.batches_per_epoch):
            batch = next(batches, None)  # None: this rank's share of the epoch has run out
            sync = (index + 1) % train.grad_accum == 0 or index + 1 == self.batches_per_epoch
            examples += 0 if batch is None else self.objective.count(batch)
            self._micro_step(batch, epoch, sync, micro=index % train.grad_accum)
            if not sync:
                continue
            self.progress.batch_in_epoch = index + 1
            self.progress.step += 1
            bar.update(1)
            step = self.progress.step
            if step % train.log_interval == 0:
                rate = examples * self.world / max(time.perf_counter() - started, 1e-9)
                self._log_train(rate, bar)
                started, examples = time.perf_counter(), 0
            if step % train.check_every == 0:
                self._check_window()
            if train.checkpoint_every and step % train.checkpoint_every == 0:
                self._save(("latest",))
            if train.max_steps is not None and step >= train.max_steps:
                raise StopTraining(f"reached train.max_steps={train.max_steps}")
            if train.max_seconds is not None and time.perf_counter() - self.started >= train.max_seconds:
                raise StopTraining(f"ran train.max_seconds={train.max_seconds:g}")
        self._check_window()

    def _micro_step(self, batch: dict | None, epoch: int, sync: bool, micro: int = 0) -> None:
        """One micro-batch (`micro`: its index within the optimizer step); the step itself when `sync`."""
        train = self.config.train
        with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
            if batch is None:  # one example of the last batch, weighted 0: the gradients still sync
                empty = {key: value[:1] for key, value in self.last_batch.items()}
                with self.accelerator.autocast():
                    pred, rows = self.objective.outputs(self.model, empty)
                loss = compute_losses(pred, rows, self.layout, self.config.loss, self.float_scale)["total"] * 0.0
            else:
                batch = self.last_batch = batch_to_device(batch, self.device)
                generator = torch.Generator(device=self.device).manual_seed(
                    micro_batch_seed(train.seed, self.progress.step, micro, self.rank)
                )
                with self.accelerator.autocast():
                    pred, rows = self.objective.outputs(self.model, batch, epoch, generator)
                losses = compute_losses(pred, rows, self.layout, self.config.loss, self.float_scale)
                loss = losses["total"]
                self.train_metrics.update(pred, rows, losses)
                finite = torch.isfinite(loss.detach())
                self.window += torch.stack(
                    [torch.where(finite, loss.detach().double(), 0.0), torch.ones_like(self.window[0]), (~finite).double()]
                )
            self.accelerator.backward(loss / train.grad_accum)
        if sync:
            self.accelerator.clip_grad_norm_(self.model.parameters(), train.grad_clip)
            self.optimizer.step()
            self.step_lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ evaluation and logging

    def evaluate(self, split: str = "val") -> dict:
        """Metrics of `split` over all ranks, with the "val_" key prefix."""
        model = self.accelerator.unwrap_model(self.model)  # no DDP collectives: ranks may differ by a batch
        model.eval()
        batches = islice(self.source.loader(split, 0, rank=self.rank, world=self.world), self.config.train.val_batches)
        metrics, _ = score(
            model, batches, self.layout, self.config.loss, self.device, self.accelerator.autocast, self.objective, self.float_scale
        )
        model.train()
        return metrics.compute(reduce=self._sum, prefix=VAL_PREFIX)

    def _log_train(self, rate: float, bar) -> None:
        metrics = self.train_metrics.compute(reduce=self._sum)
        self.train_metrics.reset()
        metrics.update({"lr": self.step_lr, "examples_per_s": rate, "epoch": self.progress.step / self.updates_per_epoch})
        bar.set_postfix(bar_postfix(metrics, rate), refresh=False)
        self._emit(metrics)

    def _emit(self, metrics: dict) -> None:
        """To the trackers (wandb) and to OUTPUT/metrics.jsonl, from the main process."""
        self.accelerator.log(metrics, step=self.progress.step)
        if self.accelerator.is_main_process:
            append_metrics(
                self.output_dir / "metrics.jsonl",
                {"step": self.progress.step, "epoch": metrics.get("epoch", self.progress.epoch), **metrics},
            )

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum")

    def _print(self, text: str) -> None:
        if self.accelerator.is_main_process:
            print(text, flush=True)

    # ------------------------------------------------------------------ escape hatches

    def _check_window(self) -> None:
        """The host-side checks on the loss since the last check (one sync)."""
        loss_sum, batches, nonfinite = self._sum(self.window.clone()).tolist()
        self.window.zero_()
        train, progress = self.config.train, self.progress
        if nonfinite and train.stop_on_nonfinite:
            # `latest` stays at the last good checkpoint; before the first one, it is this one.
            earlier = (self.output_dir / "latest").exists()
            self._save(("nonfinite",) if earlier else ("nonfinite", "latest"))
            where = f"the last good checkpoint is {self.output_dir / 'latest'}" if earlier else "there was no earlier checkpoint"
            raise StopTraining(
                f"the loss became NaN or inf before step {progress.step}; {where} (the failing state is in {self.output_dir / 'nonfinite'})",
                saved=True,
            )
        if not batches:
            return
        progress.best_window_loss, progress.batches_since_best = track_patience(
            progress.best_window_loss, progress.batches_since_best, loss_sum / batches, int(batches) // self.world
        )
        reason = patience_verdict(progress.best_window_loss, progress.batches_since_best, train.patience_batches)
        if reason:
            raise StopTraining(reason)

    def _check_change_acc(self, val: dict) -> None:
        reason = change_acc_verdict(val, self.progress.epoch, self.config.train.min_val_change_acc)
        if reason:
            raise StopTraining(reason)

    # ------------------------------------------------------------------ checkpoints

    def _save_epoch_checkpoint(self, val: dict) -> None:
        loss = val.get("val_loss/total", math.inf)
        links = ("latest", "best") if loss < self.progress.best_val_loss else ("latest",)
        self.progress.best_val_loss = min(self.progress.best_val_loss, loss)
        self._save(links)

    def _save(self, links: tuple[str, ...]) -> None:
        mine = {
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.zeros(0, dtype=torch.uint8),
            "metric_totals": self.train_metrics.totals.cpu(),
            "window": self.window.cpu(),
        }
        ranks = _gather(mine, self.world)
        if self.accelerator.is_main_process:
            state = {
                "progress": dataclasses.asdict(self.progress),
                "scheduler": self.scheduler.state_dict(),
                "config": to_dict(self.config),
                "store": self.fingerprint,
                "float_scale": None if self.float_scale is None else self.float_scale.tolist(),  # evaluation on another store reads it
                "world_size": self.world,
                "wandb_id": self.wandb_id,
            }
            model = self.accelerator.unwrap_model(self.model).state_dict()
            save_checkpoint(
                self.output_dir,
                self.progress.step,
                model=model,
                optimizer=self.optimizer.state_dict(),
                ranks=ranks,
                state=state,
                links=links,
            )
        self.accelerator.wait_for_everyone()

    def _resume(self, path: str) -> None:
        model, optimizer, ranks, state = load_checkpoint(path)
        if state["store"]["selection"] != self.fingerprint["selection"] or state["store"]["encoding"] != self.fingerprint["encoding"]:
            raise CheckpointError(
                f"{path} was trained on another store or selection ({state['store']['path']}: {state['store']['games']} games, "
                f"fingerprint {state['store']['selection']}); this one has {self.fingerprint['games']} games, fingerprint "
                f"{self.fingerprint['selection']}: resume on the same store with the same data filters"
            )
        for section in ("encoding", "data", "model"):
            if state["config"][section] != to_dict(self.config)[section]:
                raise CheckpointError(
                    f"{path} was trained with another {section} config; resume with the run's own config (its {section} section must match)"
                )
        if state["world_size"] != self.world:
            raise CheckpointError(
                f"{path} was written by {state['world_size']} process(es); resume with the same number to continue exactly (this run has {self.world})"
            )
        self.accelerator.unwrap_model(self.model).load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        mine = ranks[self.rank]
        torch.set_rng_state(mine["rng_cpu"])
        if self.device.type == "cuda" and mine["rng_cuda"].numel():
            torch.cuda.set_rng_state(mine["rng_cuda"], self.device)
        self.train_metrics.totals.copy_(mine["metric_totals"].to(self.device))
        self.window.copy_(mine["window"].to(self.device))
        self.progress = Progress(**{**state["progress"], "stop_reason": ""})
        self.wandb_id = state["wandb_id"]
        if self.accelerator.is_main_process:
            truncate_metrics(self.output_dir / "metrics.jsonl", self.progress.step)
        self._print(f"resumed from {path} at step {self.progress.step} (epoch {self.progress.epoch}, batch {self.progress.batch_in_epoch})")


def _gather(obj: dict, world: int) -> list[dict]:
    """Every rank's `obj`, on every rank (in-memory pickling between our own processes)."""
    if world == 1:
        return [obj]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, obj)
    return gathered
