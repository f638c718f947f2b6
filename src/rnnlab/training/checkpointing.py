"""Stopping and coming back: the resumable checkpoint, roll-backs and clean interruption.

``RUN/trainer.pt`` names the ``last-<step>.safetensors`` weights written just before it and holds
everything else a resume needs (optimiser, schedule, data position, RNG, running loss). A run of
non-finite steps rolls back to it with a halved learning rate; SIGINT/SIGTERM stop the loop
after the current step or evaluation, which then writes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab import distributed
from rnnlab.errors import RnnlabError
from rnnlab.runtime import rng_state, set_rng_state

TRAINER_FORMAT = 1
MAX_ROLLBACKS = 3  # roll-backs (each halving the learning rate) before the run gives up


class _RolledBack(Exception):
    """Unwinds the loop after a roll-back; training goes on from the restored position."""


@dataclass
class _Running:
    """Training loss and throughput since the last evaluation."""

    loss_sum: float = 0.0
    steps: int = 0
    items: int = 0
    since: float = field(default_factory=time.monotonic)


class Checkpoints:
    """The Trainer's resumable state: writing it, reading it back, rolling back to it.

    A mixin of :class:`rnnlab.training.trainer.Trainer`, whose attributes (``model``,
    ``optimizer``, ``schedule``, ``task``, ``step``, ...) it saves and restores.
    """

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

    def _signal_caught(self) -> bool:  # see StopSignals
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
            "averaging": self.averaging.state_dict(),
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
            if "averaging" in state:  # written before NT-ASGD existed: nothing averaged yet
                self.averaging.load_state_dict(state["averaging"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise RnnlabError(f"{self.run_dir / ckpt.TRAINER} is incomplete or does not match "
                              f"this run ({type(exc).__name__}: {exc})") from None
        if self.is_main:
            # What a crash left behind: half-written temporary files, and log lines of steps
            # after this checkpoint, which the resumed run is about to write again.
            ckpt.remove_temp_files(self.run_dir)
            for name in (ckpt.METRICS, ckpt.TRAIN_LOG):
                ckpt.truncate_log(self.run_dir, self.step, name)


class StopSignals:
    """While entered, SIGINT/SIGTERM ask ``trainer`` to stop after its current step or
    evaluation (``trainer._stop_signal``); a second SIGINT quits at once."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def handle(self, signum: int, frame: Any) -> None:
        if self.trainer._stop_signal is not None:  # a second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self.trainer._stop_signal = signum
        if signum == signal.SIGINT and self.trainer.is_main:
            # Said at once: an evaluation or a step may take a while to finish.
            _say("rnnlab: stopping after the current step or evaluation and saving a "
                 "checkpoint; press Ctrl-C again to quit at once without saving this step\n")

    def __exit__(self, *exc: Any) -> bool:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def _say(text: str) -> None:
    """Write to stderr from a signal handler: straight to the descriptor, since a buffered
    write would raise if the signal interrupted another write to the same stream."""
    try:
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))
    except (AttributeError, OSError, ValueError):  # no descriptor (a captured stream)
        print(text, end="", file=sys.stderr, flush=True)
