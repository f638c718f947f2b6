"""Presentation of a run: a progress bar and one printed line per evaluation."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from rnnlab.training.trainer import Callback, Trainer, TrainResult


def format_record(record: dict[str, Any]) -> str:
    """One readable line for an evaluation record."""
    parts = [f"step {record['step']}", f"epoch {record['epoch']:.2f}"]
    for key, fmt in (("loss", ".4f"), ("ppl", ".2f"), ("bits", ".4f"), ("accuracy", ".4f")):
        if key in record and record[key] is not None:
            parts.append(f"valid {key} {record[key]:{fmt}}")
    rate = next((v for k, v in record.items() if k.endswith("_per_s")), None)
    if rate is not None:
        parts.append(f"{rate:,.0f} {next(k for k in record if k.endswith('_per_s'))[:-6]}/s")
    parts.append(f"lr {record['lr']:.3g}")
    if record.get("best"):
        parts.append("*best*")
    return " | ".join(parts)


class ProgressBar(Callback):
    """A tqdm bar over the whole budget (epochs, steps or minutes, whichever ends first).

    The bar counts per-mille of the budget, so its ETA is right for any kind of budget. It is
    shown only on a terminal; in CI logs the per-evaluation lines say enough.
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        # Looked up now, not at import: a caller may have redirected sys.stderr since.
        stream = sys.stderr if stream is None else stream
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.bar: tqdm | None = None
        self.smoothed: float | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if self.enabled:
            self.bar = tqdm(total=1000, file=self.stream, unit="‰", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}")
            self.bar.update(int(trainer.progress() * 1000))

    def on_step(self, trainer: Trainer, loss: float) -> None:
        if self.bar is None:
            return
        if math.isfinite(loss):
            self.smoothed = loss if self.smoothed is None else 0.95 * self.smoothed + 0.05 * loss
        self.bar.update(int(trainer.progress() * 1000) - self.bar.n)
        if trainer.step % 10 == 0 and self.smoothed is not None:
            postfix = {"loss": f"{self.smoothed:.3f}"}
            if trainer.task.best_metric == "loss":
                postfix["ppl"] = f"{math.exp(min(self.smoothed, 50)):.1f}"
            seconds = time.monotonic() - trainer.running.since
            if seconds > 0:
                postfix[f"{trainer.task.unit[:3]}/s"] = f"{trainer.running.items / seconds:,.0f}"
            postfix["lr"] = f"{trainer.lr:.2g}"
            self.bar.set_postfix(postfix, refresh=False)

    def on_eval(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.write(format_record(record), file=self.stream)

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class PrintEvaluations(Callback):
    """Print each evaluation as a line, and a progress line every ``train.log_every`` steps.

    Used when there is no progress bar (output to a file or a CI log), where otherwise nothing
    would show between evaluations that a run is alive and how fast it goes.
    """

    def __init__(self, stream: TextIO | None = None):
        self.stream = sys.stdout if stream is None else stream
        self._mark: tuple[float, int] | None = None  # (time, items) of the last progress line
        self._losses: list[float] = []

    def on_train_start(self, trainer: Trainer) -> None:
        self._mark = (time.monotonic(), trainer.running.items)
        self._losses = []

    def on_step(self, trainer: Trainer, loss: float) -> None:
        every = trainer.train_config.log_every
        if math.isfinite(loss):
            self._losses.append(loss)
        if not every or trainer.step % every:
            return
        now, items = time.monotonic(), trainer.running.items
        since, items_before = self._mark or (trainer.running.since, 0)
        if items < items_before or since < trainer.running.since:  # an evaluation reset it
            since, items_before = trainer.running.since, 0
        self._mark = (now, items)
        loss_text = (f"{sum(self._losses) / len(self._losses):.4f}" if self._losses
                     else "not finite")
        self._losses = []
        rate = (items - items_before) / max(now - since, 1e-9)
        print(f"step {trainer.step} | {100 * trainer.progress():.1f}% | train loss {loss_text} | "
              f"{rate:,.0f} {trainer.task.unit}/s | elapsed {_clock(trainer.elapsed)}",
              file=self.stream, flush=True)

    def on_eval(self, trainer: Trainer, record: dict[str, Any]) -> None:
        print(format_record(record), file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlotCurves(Callback):
    """Draw ``RUN/curves.png`` (see ``rnnlab plot``) when training ends, if matplotlib is there.

    A plot is a convenience: any failure to draw it is a warning, never a failed run.
    """

    NAME = "curves.png"

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if importlib.util.find_spec("matplotlib") is None:
            return
        out = Path(result.run_dir) / self.NAME
        try:
            from rnnlab.plots import plot_runs

            plot_runs([result.run_dir], out)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the training stands
            warnings.warn(f"could not draw {out}: {exc}", RuntimeWarning, stacklevel=2)
