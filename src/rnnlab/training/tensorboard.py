"""Optional TensorBoard logging: ``rnnlab train --tensorboard`` writes scalars to RUN/tensorboard.

``tensorboard`` is not a dependency of rnnlab; it is imported only when this logger is created,
so that a missing package is reported before any training starts, in one line.

    tensorboard --logdir runs/          # then open http://localhost:6006
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnlab.errors import RnnlabError
from rnnlab.training.trainer import Callback, Trainer, TrainResult

LOG_DIR = "tensorboard"
# Record fields that are not curves (or are already the x axis).
_NOT_SCALARS = {"step", "epoch", "split", "best", "elapsed", "lr"}


def summary_writer_class() -> Callable[..., Any]:
    """``torch.utils.tensorboard.SummaryWriter``, or a clear error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises this itself when the tensorboard package is absent
        raise RnnlabError("--tensorboard needs the tensorboard package: pip install tensorboard"
                          ) from None
    return SummaryWriter


class TensorBoardLogger(Callback):
    """Training loss and learning rate every ``train.log_every`` steps, every evaluation metric,
    and throughput, under ``RUN/tensorboard`` (or ``log_dir``).

    ``writer_factory`` builds the writer (``SummaryWriter`` by default): keyword arguments
    ``log_dir``, ``purge_step`` and ``flush_secs``.
    """

    def __init__(self, log_dir: str | Path | None = None,
                 writer_factory: Callable[..., Any] | None = None):
        self.log_dir = log_dir
        self.writer_factory = writer_factory or summary_writer_class()
        self.writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        log_dir = Path(self.log_dir) if self.log_dir else trainer.run_dir / LOG_DIR
        # A resumed run continues from its checkpoint's step: purge the events a crashed or
        # interrupted process logged after it, so the curves do not fork.
        self.writer = self.writer_factory(log_dir=str(log_dir),
                                          purge_step=trainer.step or None, flush_secs=10)

    def on_step(self, trainer: Trainer, loss: float) -> None:
        every = trainer.train_config.log_every
        if self.writer is None or not every or trainer.step % every:
            return
        if math.isfinite(loss):  # a skipped step's NaN would only hide the curve
            self.writer.add_scalar("train/loss", loss, trainer.step)
        self.writer.add_scalar("train/lr", trainer.lr, trainer.step)

    def on_eval(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = record["step"]
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not math.isfinite(value):
                continue
            if key.endswith("_per_s") or key == "eval_seconds":
                tag = f"speed/{key}"
            elif key.startswith("train_"):
                tag = f"train/{key[len('train_'):]}_mean"
            else:
                tag = f"{record.get('split', 'valid')}/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("train/epoch", record["epoch"], step)
        self.writer.flush()  # an interrupted run keeps everything up to its last evaluation

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
