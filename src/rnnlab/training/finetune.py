"""Fine-tuning a finished run: its best weights, trained on with averaged SGD from the first step.

Merity et al. (2017) train an AWD-LSTM with NT-ASGD, then restart from the best weights with
averaging on from the start (their fine-tuning stage). Here that is a new run directory whose
``config.json`` (``train.finetune_from``) and ``run.json`` (``parent``) name the run it came
from; that run's files are only read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab.config import RunConfig
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError
from rnnlab.training.task import Task


def finetune_config(parent: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """``parent``'s config with ASGD from the first step, ``overrides`` (``train.*`` only)
    applied, and the parent recorded."""
    from rnnlab.config_resolve import apply_overrides, canonical_key

    parent = Path(parent)
    config = ckpt.load_config(parent)
    values = {canonical_key(k, "--finetune"): v for k, v in (overrides or {}).items()}
    if any(not k.startswith("train.") for k in values):
        raise RnnlabError("--finetune keeps the run's model and data; only budget and train.* "
                          "options may change")
    apply_overrides(config, values, source="--finetune")
    config.train.optimizer = "asgd"
    config.train.init_from = None
    config.train.finetune_from = str(parent.resolve())
    return config.validate()


def start_from_parent(task: Task, parent: str | Path) -> None:
    """Load ``parent``'s best weights into ``task.model``; its vocabulary must be the task's."""
    parent = Path(parent)
    saved = Vocab.load(parent / ckpt.VOCAB)
    if saved.itos != task.vocab.itos:
        raise RnnlabError(f"the vocabulary of the training data ({len(task.vocab)} tokens) "
                          f"differs from {parent / ckpt.VOCAB} ({len(saved)} tokens): fine-tune "
                          f"on the data the run was trained on")
    ckpt.load_weights(task.model, ckpt.weights_path(parent, "best"))
