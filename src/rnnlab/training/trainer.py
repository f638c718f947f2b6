"""The training loop: one Trainer for every task.

The Trainer owns what every run needs: the optimiser and schedule, the budget (epochs, steps,
minutes), evaluation and the best checkpoint, early stopping, resumable checkpoints, clean
interruption and guards against non-finite steps (skipped; a run of them rolls back to the
last checkpoint with a halved learning rate). A task (see ``task.py``) supplies batches,
the loss and its metrics; presentation (progress bar, printing) comes in through callbacks.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab import distributed
from rnnlab.config import RunConfig
from rnnlab.errors import RnnlabError
from rnnlab.runtime import (
    autocast,
    autocast_dtype,
    pin_batch,
    rng_state,
    set_rng_state,
)
from rnnlab.training.optim import Schedule, clipped_step, grad_norm, make_optimizer, set_lr
from rnnlab.training.task import Task

TRAINER_FORMAT = 1
MAX_BAD_STEPS = 5  # non-finite steps in a row before rolling back to the last checkpoint
MAX_ROLLBACKS = 3  # roll-backs (each halving the learning rate) before the run gives up
_END = object()  # marks the end of an epoch's batches


class _RolledBack(Exception):
    """Unwinds the loop after a roll-back; training goes on from the restored position."""


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


@dataclass
class _Running:
    """Training loss and throughput since the last evaluation."""

    loss_sum: float = 0.0
    steps: int = 0
    items: int = 0
    since: float = field(default_factory=time.monotonic)


class Trainer:
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
        with self._signals_handled():
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
        set_lr(self.optimizer, self.lr)
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

    def _roll_back(self, what: str) -> None:
        """Recover from a numerical fault: go back to the last checkpoint with half the learning
        rate (at most MAX_ROLLBACKS times), else stop with a clear error. Never returns."""
        # Rank 0 decides for all: without a shared disk only it is sure to see trainer.pt.
        can = distributed.broadcast_object(
            self.rollbacks < MAX_ROLLBACKS and (self.run_dir / ckpt.TRAINER).exists())
        if not can:
            tried = (f" and {self.rollbacks} roll-backs to the last checkpoint with a halved "
                     f"learning rate did not help" if self.rollbacks else
                     " before any checkpoint was written")
            then = (f"resume with: rnnlab train --resume {self.run_dir}" if self.rollbacks
                    else "start the run again")
            raise RnnlabError(
                f"{what}{tried}; no checkpoint was written with non-finite weights. Lower "
                f"train.lr or set train.clip, then {then}")
        rollbacks, scale = self.rollbacks + 1, self.lr_scale * 0.5
        # Weights, optimiser, schedule, data position and RNG of that checkpoint:
        self.resume(from_main=True)
        self.rollbacks, self.lr_scale = rollbacks, scale
        self.bad_steps = 0
        distributed.seed_rank(self.train_config.seed, self.step)  # as a resumed run would
        if self.is_main:
            warnings.warn(f"{what}; rolled back to the checkpoint of step {self.step} with the "
                          f"learning rate scaled by {scale:g} (roll-back {rollbacks} of "
                          f"{MAX_ROLLBACKS})", RuntimeWarning, stacklevel=2)
        raise _RolledBack

    def _signal_caught(self) -> bool:
        """Whether any rank caught SIGINT/SIGTERM (one all-reduce under DDP)."""
        if self.world_size == 1:
            return self._stop_signal is not None
        flag = torch.tensor([float(self._stop_signal is not None)], dtype=torch.float64,
                            device=self.device)
        return bool(distributed.all_reduce_sum(flag).item() > 0)

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    @contextlib.contextmanager
    def _writing(self):
        """A failed write (disk full, permissions) leaves the previous checkpoint intact: say so."""
        try:
            yield
        except OSError as exc:
            then = ("the previous checkpoint is intact: fix the cause, then resume with: rnnlab "
                    f"train --resume {self.run_dir}" if (self.run_dir / ckpt.TRAINER).exists()
                    else "no checkpoint was written yet: fix the cause, then start the run again")
            raise RnnlabError(f"could not write a checkpoint in {self.run_dir} "
                              f"({exc.strerror or exc}); {then}") from None

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
        if self.schedule.after_eval(improved):
            record["lr_decayed_to"] = self.schedule.lr(self.step, self.progress()) * self.lr_scale
        if self.is_main:
            with self._writing():
                if improved:
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

    def _save_last(self) -> None:
        """Write the resumable state: weights first, then ``trainer.pt`` (the commit point)."""
        if not self._weights_finite():  # never replace a good checkpoint by a broken one
            self._roll_back("the weights became non-finite")
        weights_name = f"last-{self.step:08d}.safetensors"
        state = self.state_dict(weights_name)  # on every rank: the task may gather across ranks
        if not self.is_main:
            return
        with self._writing():
            ckpt.save_weights(self.model, self.run_dir / weights_name, {"step": str(self.step)})
            ckpt.save_trainer_state(state, self.run_dir / ckpt.TRAINER)
        for old in self.run_dir.glob("last-*.safetensors"):
            if old.name != weights_name:
                old.unlink(missing_ok=True)

    def _read_checkpoint(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state = ckpt.load_trainer_state(self.run_dir / ckpt.TRAINER)
        if state.get("format_version") != TRAINER_FORMAT:
            raise RnnlabError(f"{self.run_dir / ckpt.TRAINER} has an unsupported format version")
        name = state.get("weights")
        if not isinstance(name, str):
            raise RnnlabError(f"{self.run_dir / ckpt.TRAINER} is incomplete or does not match "
                              f"this run (it names no weights file)")
        return state, ckpt.read_weights(self.run_dir / name)

    def state_dict(self, weights_name: str) -> dict[str, Any]:
        return {
            "format_version": TRAINER_FORMAT,
            "weights": weights_name,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed": self.elapsed,
            "best_value": self.best_value,
            "evals_since_best": self.evals_since_best,
            "last_eval_step": self.last_eval_step,
            "running": [self.running.loss_sum, self.running.steps, self.running.items],
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "task": self.task.state_dict(),
            "rng": rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
        }

    def resume(self, from_main: bool = False) -> None:
        """Continue from ``RUN/trainer.pt`` and the weights it names, exactly where it stopped.

        ``from_main``: rank 0 reads the checkpoint and sends it to the others, which need not
        see the same disk (a roll-back in the middle of a run).
        """
        state, tensors = (distributed.from_main(self._read_checkpoint) if from_main
                          else self._read_checkpoint())
        try:
            ckpt.load_tensors(self.model, tensors, self.run_dir / state["weights"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.task.load_state_dict(state["task"])
            self.step, self.epoch = state["step"], state["epoch"]
            self.batch_in_epoch = state["batch_in_epoch"]
            self.elapsed = state["elapsed"]
            self.best_value, self.evals_since_best = state["best_value"], state["evals_since_best"]
            self.last_eval_step = state["last_eval_step"]
            loss_sum, steps, items = state["running"]
            self.running = _Running(loss_sum, steps, items)
            set_rng_state(state["rng"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.lr_scale = float(state.get("lr_scale", 1.0))
            self.rollbacks = int(state.get("rollbacks", 0))
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise RnnlabError(f"{self.run_dir / ckpt.TRAINER} is incomplete or does not match "
                              f"this run ({type(exc).__name__}: {exc})") from None
        if self.is_main:
            # What a crash left behind: half-written temporary files, and log lines of steps
            # after this checkpoint, which the resumed run is about to write again.
            ckpt.remove_temp_files(self.run_dir)
            for name in (ckpt.METRICS, ckpt.TRAIN_LOG):
                ckpt.truncate_log(self.run_dir, self.step, name)

    # --- signals -----------------------------------------------------------------------------

    def _signals_handled(self):
        trainer = self

        class _Handler:
            def __enter__(self):
                self.previous = {}
                if threading.current_thread() is not threading.main_thread():
                    return self
                for signum in (signal.SIGINT, signal.SIGTERM):
                    self.previous[signum] = signal.signal(signum, self.handle)
                return self

            def handle(self, signum, frame):
                if trainer._stop_signal is not None:  # a second Ctrl-C: stop right now
                    raise KeyboardInterrupt
                trainer._stop_signal = signum
                if signum == signal.SIGINT and trainer.is_main:
                    # Said at once: an evaluation or a step may take a while to finish.
                    _say("rnnlab: stopping after the current step or evaluation and saving a "
                         "checkpoint; press Ctrl-C again to quit at once without saving this "
                         "step\n")

            def __exit__(self, *exc):
                for signum, handler in self.previous.items():
                    signal.signal(signum, handler)
                return False

        return _Handler()


def _say(text: str) -> None:
    """Write to stderr from a signal handler: straight to the descriptor, since a buffered
    write would raise if the signal interrupted another write to the same stream."""
    try:
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))
    except (AttributeError, OSError, ValueError):  # no descriptor (a captured stream)
        print(text, end="", file=sys.stderr, flush=True)
