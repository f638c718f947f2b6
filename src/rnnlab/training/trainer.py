"""The training loop: one Trainer for every task.

The Trainer owns what every run needs: the optimiser and schedule, the budget (epochs, steps,
minutes), evaluation and the best checkpoint, early stopping, resumable checkpoints, clean
interruption and guards against non-finite steps (skipped; a run of them rolls back to the
last checkpoint with a halved learning rate). Writing, reading and rolling back to checkpoints,
and catching signals, live in ``checkpointing.py``. A task (see ``task.py``) supplies batches,
the loss and its metrics; presentation (progress bar, printing) comes in through callbacks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab import distributed
from rnnlab.config import RunConfig
from rnnlab.errors import RnnlabError
from rnnlab.runtime import autocast, autocast_dtype, pin_batch
from rnnlab.training.averaging import WeightAverage
from rnnlab.training.checkpointing import Checkpoints, StopSignals, _RolledBack, _Running
from rnnlab.training.optim import Schedule, clipped_step, grad_norm, make_optimizer, set_lr
from rnnlab.training.task import Task

MAX_BAD_STEPS = 5  # non-finite steps in a row before rolling back to the last checkpoint
_END = object()  # marks the end of an epoch's batches


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the `last` checkpoint is safely written."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(
            f"interrupted at step {step}; resume with: rnnlab train --resume {run_dir}")
        self.run_dir = run_dir
        self.step = step


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    best: dict[str, Any] | None
    stop_reason: str
    steps: int
    elapsed: float


class Callback:
    """Hooks for presentation and logging; every method is optional."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step(self, trainer: Trainer, loss: float) -> None: ...
    def on_eval(self, trainer: Trainer, record: dict[str, Any]) -> None: ...
    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None: ...


class Trainer(Checkpoints):
    def __init__(self, task: Task, config: RunConfig, run_dir: str | Path, device: torch.device,
                 callbacks: Sequence[Callback] = ()):
        self.task = task
        self.config = config
        self.train_config = config.train
        self.run_dir = Path(run_dir)
        self.device = device
        self.world_size = distributed.world_size()
        self.rank = distributed.rank()
        self.is_main = distributed.is_main()  # only rank 0 writes files and presents progress
        self.callbacks = list(callbacks) if self.is_main else []
        self.model = task.model  # the plain module: evaluated and saved
        # A task that cannot take its own share of the data gets each batch sliced per rank.
        self._slice_batches = self.world_size > 1 and not task.shard(self.rank, self.world_size)
        self.loss_fn = distributed.wrap_loss(task, device)  # DDP when there are several ranks
        self.amp_dtype = autocast_dtype(config.train.precision, device, warn=self.is_main)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.optimizer = make_optimizer(self.model, self.train_config, device)
        self.schedule = Schedule(self.train_config)
        self.averaging = WeightAverage(self.model, self.train_config)  # NT-ASGD's, if asked for
        self.steps_per_epoch = task.steps_per_epoch()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.elapsed = 0.0  # training seconds, summed over resumes
        self.best_value: float | None = None
        self.evals_since_best = 0
        self.last_eval_step = -1
        self.lr = self.train_config.lr
        self.bad_steps = 0
        self.lr_scale = 1.0  # halved by each roll-back after non-finite steps; saved in trainer.pt
        self.rollbacks = 0
        self.running = _Running()
        self._clock_start = time.monotonic()
        self._elapsed_at_start = 0.0
        self._stop_signal: int | None = None
        self._stop_agreed = False  # under DDP: some rank caught a signal (known to all ranks)
        self._log_mark = (time.monotonic(), 0)  # (time, running items) of the last train-log line

    # --- the loop ----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until the budget ends; returns the metrics and where the run lives."""
        self._clock_start = time.monotonic()
        self._elapsed_at_start = self.elapsed
        # Keep the training loss summed since the last evaluation (restored by a resume), but
        # restart the throughput count: items before a resume took an unknown time.
        self.running = _Running(self.running.loss_sum, self.running.steps)
        distributed.seed_rank(self.train_config.seed, self.step)
        for cb in self.callbacks:
            cb.on_train_start(self)
        with StopSignals(self):
            reason = self._stop_reason()
            while True:
                try:
                    while reason is None:
                        reason = self._run_epoch()
                    if reason != "interrupted" and self.last_eval_step != self.step:
                        self._evaluate()  # a step or time budget ended mid-epoch
                    break
                except _RolledBack:  # back at the last good checkpoint: train on from there
                    reason = self._stop_reason()
            if reason != "interrupted" and self._signal_caught():
                reason = "interrupted"  # during the last evaluation: still say so, exit 130
            if reason == "interrupted":
                with contextlib.suppress(_RolledBack):  # bad weights: the last checkpoint stands
                    self._save_last()
                raise TrainingInterrupted(self.run_dir, self.step)
        result = TrainResult(self.run_dir, ckpt.read_metrics(self.run_dir), self.best_record(),
                             reason, self.step, self.elapsed)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    def _run_epoch(self) -> str | None:
        # An epoch ends when the task's batches run out, not after steps_per_epoch batches: with
        # variable BPTT every epoch has its own number of windows (steps_per_epoch is epoch 0's),
        # and counting would skip the last windows of a longer epoch or wait forever for those
        # of a shorter one. One batch is read ahead to know which one is the last.
        batches = iter(self.task.batches(self.epoch, self.batch_in_epoch))
        batch = next(batches, _END)
        if batch is _END and self.batch_in_epoch == 0:
            raise RnnlabError("the training data gives no batches")
        while batch is not _END:
            self.train_step(batch)
            self.batch_in_epoch += 1
            batch = next(batches, _END)
            epoch_done = batch is _END
            if epoch_done:
                self.epoch += 1
                self.batch_in_epoch = 0
            every = self.train_config.eval_every
            if epoch_done or (every and self.step % every == 0):
                self._evaluate()
            elif self.train_config.checkpoint_every and (
                    self.step % self.train_config.checkpoint_every == 0):
                self._save_last()
            reason = self._stop_reason()
            if reason or epoch_done:
                return reason
        # Resumed at the very end of an epoch's batches: that epoch is over.
        self.epoch += 1
        self.batch_in_epoch = 0
        return self._stop_reason()

    def train_step(self, batch: Any) -> None:
        """One optimisation step on ``batch`` (skipped if the loss or gradients are not finite).

        Under DDP ``batch`` is the global batch and this rank trains on its share; every decision
        (skip, stop, learning rate) is taken from values that are identical on all ranks.
        """
        self.lr = self.schedule.lr(self.step, self.progress()) * self.lr_scale
        by_window = self.train_config.scale_lr_by_window  # a short window takes a smaller step
        set_lr(self.optimizer, self.lr * (self.task.lr_factor(batch) if by_window else 1.0))
        self.model.train()
        batch, weight = self._local_batch(batch)
        with autocast(self.device, self.amp_dtype):
            loss, items = self.loss_fn(batch)  # through DDP's forward, which arms the all-reduce
        self.optimizer.zero_grad(set_to_none=True)
        scaled = loss * weight if weight != 1.0 else loss
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        # Without clipping the norm is still computed: it is what tells a step with NaN/inf
        # gradients but a finite loss from a good one.
        norm = float(grad_norm(grads))
        loss_value, items = self._reduce(loss.detach(), weight, items)
        # A gradient scaler skips steps with inf/NaN gradients itself and lowers its scale; while
        # it calibrates such steps are expected, so only a non-finite loss counts against the run.
        grads_finite = self.scaler is not None or math.isfinite(norm)
        if not (math.isfinite(loss_value) and grads_finite):
            self._skip_step()  # never let a NaN/inf reach the weights
        else:
            self.bad_steps = 0
            step = (lambda: self.scaler.step(self.optimizer)) if self.scaler \
                else self.optimizer.step
            clipped_step(self.optimizer, grads, norm, self.train_config.clip, step)
            self.averaging.update()
            self.running.loss_sum += loss_value
            self.running.steps += 1
        if self.scaler:
            self.scaler.update()
        self.running.items += items
        self.step += 1
        if self.train_config.log_every and self.step % self.train_config.log_every == 0:
            self._log_train(loss_value)
        for cb in self.callbacks:
            cb.on_step(self, loss_value)

    def _local_batch(self, batch: Any) -> tuple[Any, float]:
        """This rank's share of ``batch`` and its loss weight; pinned when it goes to a GPU."""
        weight = 1.0
        if self._slice_batches:
            batch, weight = distributed.local_batch(batch, self.rank, self.world_size)
        if self.device.type == "cuda":
            batch = pin_batch(batch)  # host tensors only: the task's .to(non_blocking) is async
        return batch, weight

    def _reduce(self, loss: torch.Tensor, weight: float, items: int) -> tuple[float, int]:
        """The global batch's mean loss and item count; also updates ``self.elapsed``.

        One process: the loss is read (the step's one host sync, also what a CUDA run pays). Under
        DDP one all-reduce per step makes every input of a decision identical on all ranks: the
        loss (mean of the ranks' weighted means), rank 0's clock (time budgets and schedules
        would otherwise split the ranks) and whether any rank caught SIGINT/SIGTERM.
        """
        elapsed = self._elapsed_at_start + time.monotonic() - self._clock_start
        if self.world_size == 1:
            self.elapsed = elapsed
            return float(loss), items
        local = torch.tensor(
            [0.0, items if weight > 0 else 0, self._stop_signal is not None,
             elapsed if self.is_main else 0.0], dtype=torch.float64, device=loss.device)
        local[0] = loss.double() * weight
        totals = distributed.all_reduce_sum(local).tolist()
        self.elapsed = totals[3]
        self._stop_agreed = totals[2] > 0
        return totals[0] / self.world_size, int(totals[1])

    def _log_train(self, loss: float) -> None:
        """A learning-curve point in ``train_log.jsonl`` (evaluations go to metrics.jsonl)."""
        if not self.is_main:
            return
        now, items = time.monotonic(), self.running.items
        since, items_before = self._log_mark
        if items < items_before or since < self.running.since:  # an evaluation reset the count
            since, items_before = self.running.since, 0
        self._log_mark = (now, items)
        ckpt.append_metrics(self.run_dir, {
            "step": self.step, "elapsed": round(self.elapsed, 2), "loss": loss, "lr": self.lr,
            f"{self.task.unit}_per_s": round((items - items_before) / max(now - since, 1e-9), 1),
        }, name=ckpt.TRAIN_LOG)

    def _skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        if self.bad_steps >= MAX_BAD_STEPS:
            self._roll_back(f"the loss or gradients were not finite for {MAX_BAD_STEPS} steps "
                            f"in a row at step {self.step}")

    # --- budget ------------------------------------------------------------------------------

    def progress(self) -> float:
        """Fraction of the budget used: the largest of epochs, steps and minutes."""
        tc = self.train_config
        fractions = [(self.epoch + self.batch_in_epoch / max(self.steps_per_epoch, 1)) / tc.epochs]
        if tc.max_steps:
            fractions.append(self.step / tc.max_steps)
        if tc.max_minutes:
            fractions.append(self.elapsed / (60 * tc.max_minutes))
        return min(1.0, max(fractions))

    def _stop_reason(self) -> str | None:
        tc = self.train_config
        if self._stop_agreed or (self.world_size == 1 and self._stop_signal is not None):
            return "interrupted"
        if self.epoch >= tc.epochs:
            return "epochs"
        if tc.max_steps and self.step >= tc.max_steps:
            return "max_steps"
        if tc.max_minutes and self.elapsed >= 60 * tc.max_minutes:
            return "max_minutes"
        if tc.early_stop and self.evals_since_best >= tc.early_stop:
            return "early_stop"
        return None

    # --- evaluation and checkpoints ----------------------------------------------------------

    def _evaluate(self) -> dict[str, Any]:
        if not self._weights_finite():  # e.g. a huge step from finite gradients overflowed
            self._roll_back("the weights became non-finite")
        started = time.monotonic()
        # Every rank evaluates (so none waits long in a collective); rank 0's result decides.
        with self.averaging.in_model():  # once averaging started, the averaged weights count
            metrics = distributed.broadcast_object(self.task.evaluate("valid"))
        value = metrics[self.task.best_metric]
        improved = math.isfinite(value) and (self.best_value is None or (
            value > self.best_value if self.task.higher_is_better else value < self.best_value))
        if improved:
            self.best_value = value
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        running, now = self.running, time.monotonic()
        record = {
            "step": self.step,
            "epoch": round(self.epoch + self.batch_in_epoch / max(self.steps_per_epoch, 1), 4),
            "elapsed": round(self.elapsed, 2),
            "split": "valid",
            **metrics,
            "train_loss": running.loss_sum / running.steps if running.steps else None,
            "lr": self.lr,
            f"{self.task.unit}_per_s": round(running.items / max(now - running.since, 1e-9), 1),
            "eval_seconds": round(now - started, 2),
            "best": improved,
        }
        if self.averaging.after_eval(-value if self.task.higher_is_better else value):
            record["averaging_started"] = True
        if self.schedule.after_eval(improved):
            record["lr_decayed_to"] = self.schedule.lr(self.step, self.progress()) * self.lr_scale
        if self.is_main:
            with self._writing():
                if improved:
                    with self.averaging.in_model():
                        ckpt.save_weights(self.model, self.run_dir / ckpt.BEST,
                                          {"step": str(self.step)})
                ckpt.append_metrics(self.run_dir, record)
        self.last_eval_step = self.step
        # Reset before the checkpoint: the record holds these losses, and a resume from this
        # checkpoint must not count them again in the next record's train_loss.
        self.running = _Running()
        self._save_last()
        for cb in self.callbacks:
            cb.on_eval(self, record)
        return record

    def best_record(self) -> dict[str, Any] | None:
        best = [r for r in ckpt.read_metrics(self.run_dir) if r.get("best")]
        return best[-1] if best else None

