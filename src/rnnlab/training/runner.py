"""From a config to a finished run directory: build the task, then train it."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from rnnlab import __version__, distributed
from rnnlab import checkpoint as ckpt
from rnnlab.config import RunConfig
from rnnlab.data.lm_data import load_lm_data
from rnnlab.errors import RnnlabError
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.run_lock import claim_run
from rnnlab.runtime import seed_everything, set_threads
from rnnlab.training.consistency import check_run_matches
from rnnlab.training.lm_task import LanguageModelTask
from rnnlab.training.trainer import Callback, Trainer, TrainResult
from rnnlab.training.warm_start import Source, warm_start


def build_lm_task(config: RunConfig, device: torch.device) -> LanguageModelTask:
    data = load_lm_data(config.data)
    model = RNNLanguageModel(config.model, len(data.vocab)).to(device)
    return LanguageModelTask(model, data, config, device)


def _build_classify_task(config: RunConfig, device: torch.device):
    from rnnlab.training.classify_task import build_classification_task

    return build_classification_task(config, device)


BUILDERS: dict[str, Callable] = {"lm": build_lm_task, "classify": _build_classify_task}


def save_artifacts(task, run_dir: Path) -> None:
    """The files besides weights that loading a model needs (vocabulary, label names)."""
    if hasattr(task, "save_artifacts"):
        task.save_artifacts(run_dir)
    else:
        task.vocab.save(run_dir / ckpt.VOCAB)


def default_run_dir(config: RunConfig) -> Path:
    source = config.data.corpus or Path(config.data.text or config.data.train or "text").stem
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.task}-{source}-{config.preset or 'custom'}-{stamp}"


def train(config: RunConfig, out: str | Path | None = None, *,
          callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train a new run described by ``config`` into ``out`` (default ``runs/<name>``)."""
    config.validate()
    run_dir = Path(out) if out else default_run_dir(config)
    set_threads(config.train.threads)
    # Under torchrun every rank runs this function; rank 0 alone checks, writes and prints.
    with distributed.session(config.train.device) as device:
        # Rank 0's name for all: the default one has a time stamp that may differ by a second
        # between ranks.
        run_dir = Path(distributed.broadcast_object(str(run_dir)))
        with _owned(run_dir, new=True):
            seed_everything(config.train.seed)
            source = Source.read(config.train.init_from) if config.train.init_from else None
            with distributed.main_first():  # rank 0 fills any data cache before others read it
                task = BUILDERS[config.task](config, device)
            started = None
            if source:  # before the optimiser exists; a resume restores its own weights instead
                started = warm_start(task.model, task.vocab, source, config.train.init_recurrent)
            if distributed.is_main():
                if started:
                    print(started.describe(), flush=True)
                ckpt.save_config(config, run_dir)
                save_artifacts(task, run_dir)
                write_run_info(run_dir, device, task)
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
        from rnnlab.config import apply_overrides

        apply_overrides(config, overrides, source="--resume")
        config.validate()
    set_threads(config.train.threads)
    # Any number of ranks may resume a run: its checkpoint holds the global batch's state.
    with distributed.session(config.train.device) as device, _owned(run_dir, new=False):
        seed_everything(config.train.seed)
        with distributed.main_first():
            task = BUILDERS[config.task](config, device)
        check_run_matches(task, run_dir)  # before a step could overwrite a good checkpoint
        trainer = Trainer(task, config, run_dir, device, callbacks)
        trainer.resume()
        if overrides and distributed.is_main():
            # Only now that the checkpoint loaded: a failed resume leaves config.json as it was.
            ckpt.save_config(config, run_dir)
        return _finish(trainer, trainer.fit())


def _finish(trainer: Trainer, result: TrainResult) -> TrainResult:
    if not trainer.is_main:
        return result
    info = ckpt.read_json(trainer.run_dir / ckpt.RUN_INFO, default={}) or {}
    info["summary"] = {
        "best": result.best, "stop_reason": result.stop_reason, "steps": result.steps,
        "elapsed": round(result.elapsed, 2),
    }
    ckpt.atomic_write_text(trainer.run_dir / ckpt.RUN_INFO, json.dumps(info, indent=2) + "\n")
    return result


def write_run_info(run_dir: Path, device: torch.device, task) -> None:
    """Versions, device and command line: what is needed to reproduce the run."""
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
    ckpt.atomic_write_text(run_dir / ckpt.RUN_INFO, json.dumps(info, indent=2) + "\n")
