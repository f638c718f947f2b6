"""From a config to a finished run directory: build the task, then train it."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnlab import __version__, distributed, fast
from rnnlab import checkpoint as ckpt
from rnnlab.config import RunConfig
from rnnlab.errors import RnnlabError
from rnnlab.lm.evaluation import unigram_nll
from rnnlab.lm.inference import LanguageModel
from rnnlab.lm.task import LanguageModelTask, build_lm_task
from rnnlab.run_lock import claim_run
from rnnlab.runtime import seed_everything, set_threads
from rnnlab.training.consistency import check_run_matches
from rnnlab.training.finetune import start_from_parent
from rnnlab.training.trainer import Callback, Trainer, TrainResult
from rnnlab.training.warm_start import Source, warm_start


def _build_classify_task(config: RunConfig, device: torch.device):
    from rnnlab.classify.task import build_classification_task

    return build_classification_task(config, device)


def _build_line_task(config: RunConfig, device: torch.device):
    from rnnlab.lines.task import build_line_task

    return build_line_task(config, device)


def task_kind(config: RunConfig) -> str:
    """Which builder and final report a run needs: its task, or "lines" for a language model
    read line by line (``data.unit = "line"``)."""
    return "lines" if config.task == "lm" and config.data.unit == "line" else config.task


BUILDERS: dict[str, Callable] = {"lm": build_lm_task, "classify": _build_classify_task,
                                 "lines": _build_line_task}


def save_artifacts(task, run_dir: Path) -> None:
    """The files besides weights that loading a model needs (vocabulary, label names)."""
    task.save_artifacts(run_dir)


def default_run_dir(config: RunConfig) -> Path:
    data = config.data
    source = data.corpus or Path(data.text_path or data.train_path or "text").stem
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.task}-{source}-{config.preset or 'custom'}-{stamp}"


def train(config: RunConfig, out: str | Path | None = None, *,
          callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train a new run described by ``config`` into ``out`` (default ``runs/<name>``)."""
    config.validate()
    run_dir = Path(out) if out else default_run_dir(config)
    set_threads(config.train.threads)
    # Under torchrun every rank runs this function; rank 0 alone checks, writes and prints.
    # train.fast applies while the run lasts (RNNLAB_FAST=0 still turns it off).
    with fast.enabled_as(config.train.fast), distributed.session(config.train.device) as device:
        # Rank 0's name for all: the default one has a time stamp that may differ by a second
        # between ranks.
        run_dir = Path(distributed.broadcast_object(str(run_dir)))
        with _owned(run_dir, new=True):
            seed_everything(config.train.seed)
            source = Source.read(config.train.init_from) if config.train.init_from else None
            with distributed.main_first():  # rank 0 fills any data cache before others read it
                task = BUILDERS[task_kind(config)](config, device)
            started = None
            if source:  # before the optimiser exists; a resume restores its own weights instead
                started = warm_start(task.model, task.vocab, source, config.train.init_recurrent)
            if config.train.finetune_from:  # the parent's best weights; its files are only read
                start_from_parent(task, config.train.finetune_from)
            if distributed.is_main():
                if started:
                    print(started.describe(), flush=True)
                ckpt.save_config(config, run_dir)
                save_artifacts(task, run_dir)
                write_run_info(run_dir, device, task, parent=config.train.finetune_from)
            trainer = Trainer(task, config, run_dir, device, callbacks)
            return _finish(trainer, trainer.fit())


@contextlib.contextmanager
def _owned(run_dir: Path, new: bool) -> Iterator[None]:
    """Rank 0 holds the run directory's lock (see run_lock); every rank learns if it could."""
    with contextlib.ExitStack() as stack:
        refused = None
        if distributed.is_main():
            try:
                stack.enter_context(claim_run(run_dir, new))
            except RnnlabError as exc:
                refused = str(exc)
        refused = distributed.broadcast_object(refused)
        if refused:
            raise RnnlabError(refused)
        yield


def resume(run_dir: str | Path, overrides: dict | None = None, *,
           callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Continue a run from its ``last`` checkpoint; ``overrides`` may extend the budget."""
    run_dir = Path(run_dir)
    config = ckpt.load_config(run_dir)
    if overrides:
        from rnnlab.config_resolve import apply_overrides

        apply_overrides(config, overrides, source="--resume")
        config.validate()
    set_threads(config.train.threads)
    # Any number of ranks may resume a run: its checkpoint holds the global batch's state.
    with (fast.enabled_as(config.train.fast), distributed.session(config.train.device) as device,
          _owned(run_dir, new=False)):
        seed_everything(config.train.seed)
        with distributed.main_first():
            task = BUILDERS[task_kind(config)](config, device)
        check_run_matches(task, run_dir)  # before a step could overwrite a good checkpoint
        trainer = Trainer(task, config, run_dir, device, callbacks)
        trainer.resume()
        if overrides and distributed.is_main():
            # Only now that the checkpoint loaded: a failed resume leaves config.json as it was.
            ckpt.save_config(config, run_dir)
        return _finish(trainer, trainer.fit())


@dataclass
class RunResult(TrainResult):
    """A finished run and the task still in memory (its data loaded), for the final report."""

    task: Any = field(default=None, repr=False, compare=False)
    task_name: str = "lm"

    @functools.cached_property
    def final(self) -> tuple[dict[str, Any] | None, LanguageModel | None]:
        """The task's final numbers (see REPORTS) and, for a language model, the model with its
        best weights (for samples). Computed on first use, so that a caller who needs neither
        does not pay for a test evaluation; ``(None, None)`` when there is nothing to report."""
        report = REPORTS.get(self.task_name)
        if report is None or self.task is None or self.best is None:
            return None, None
        return report(self.task, self)


def lm_final_report(task: LanguageModelTask, result: TrainResult
                    ) -> tuple[dict[str, Any], LanguageModel]:
    """The best checkpoint's valid perplexity beside the unigram baseline (and the true source's
    on synthetic data), and its test metrics; loads the best weights into ``task.model``."""
    ckpt.load_weights(task.model, ckpt.weights_path(result.run_dir, "best"))
    lm = LanguageModel(task.model, task.vocab, task.config, result.run_dir)
    splits = task.data.splits
    report: dict[str, Any] = {
        "valid_ppl": result.best["ppl"],
        "unigram_ppl": math.exp(unigram_nll(splits["train"], splits["valid"], len(task.vocab))),
    }
    synthetic = task.data.synthetic
    if synthetic is not None:
        report["true_ppl"] = math.exp(synthetic.true_nll("valid"))
        report["entropy_rate_ppl"] = math.exp(synthetic.language.entropy_rate())
    if "test" in splits:
        report["test"] = lm.evaluate_ids(splits["test"])
    return report, lm


def line_final_report(task: Any, result: TrainResult) -> tuple[dict[str, Any], LanguageModel]:
    """The best checkpoint's valid and test line metrics, and the loaded model with the run's
    lines attached for the samples' novelty; loads the best weights into ``task.model``."""
    ckpt.load_weights(task.model, ckpt.weights_path(result.run_dir, "best"))
    lm = LanguageModel(task.model, task.vocab, task.config, result.run_dir,
                       label_names=task.label_names)
    lm.known = {name: set(lines.texts) for name, lines in task.data.sets.items()}
    report: dict[str, Any] = {"unit": "line", "valid": task.evaluate("valid")}
    if "test" in task.data.sets:
        report["test"] = task.evaluate("test")
    return report, lm


REPORTS: dict[str, Callable] = {"lm": lm_final_report, "lines": line_final_report}


def _finish(trainer: Trainer, result: TrainResult) -> TrainResult:
    if not trainer.is_main:
        return result
    result = RunResult(**vars(result), task=trainer.task, task_name=task_kind(trainer.config))
    info = ckpt.read_json(trainer.run_dir / ckpt.RUN_INFO, default={}) or {}
    info["summary"] = {
        "best": result.best, "stop_reason": result.stop_reason, "steps": result.steps,
        "elapsed": round(result.elapsed, 2),
    }
    ckpt.atomic_write_text(trainer.run_dir / ckpt.RUN_INFO, json.dumps(info, indent=2) + "\n")
    return result


def write_run_info(run_dir: Path, device: torch.device, task, parent: str | None = None) -> None:
    """Versions, device and command line: what is needed to reproduce the run (and the run it
    fine-tunes, ``parent``)."""
    info = {
        "rnnlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "processes": distributed.world_size(),  # data-parallel ranks (torchrun), 1 otherwise
        "threads": torch.get_num_threads(),
        "command": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": sum(p.numel() for p in task.model.parameters()),
    }
    if parent:
        info["parent"] = parent
    ckpt.atomic_write_text(run_dir / ckpt.RUN_INFO, json.dumps(info, indent=2) + "\n")
