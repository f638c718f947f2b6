"""Before a resume trains: do the run's vocabulary, labels, config and weights belong together?

A damaged or swapped ``vocab.json`` would otherwise train on ids shifted against the weights'
rows, overwrite the good checkpoints, and fail only when the finished run is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from rnnlab import checkpoint as ckpt
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError
from rnnlab.training.task import Task


def check_run_matches(task: Task, run_dir: str | Path) -> None:
    """Raise a one-line RnnlabError naming the first disagreement; reads files, writes none."""
    run_dir = Path(run_dir)
    state = ckpt.load_trainer_state(run_dir / ckpt.TRAINER)
    name = state.get("weights")
    if not isinstance(name, str):
        raise RnnlabError(f"{run_dir / ckpt.TRAINER} is incomplete (it names no weights file)")
    weights = ckpt.read_weights(run_dir / name)
    vocab_path = run_dir / ckpt.VOCAB
    saved = Vocab.load(vocab_path)
    model = task.model
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            _expect_rows(weights, f"{module_name}.weight", len(saved), name,
                         f"{vocab_path} holds {len(saved)} tokens")
    if isinstance(getattr(model, "decoder", None), nn.Linear):
        _expect_rows(weights, "decoder.weight", len(saved), name,
                     f"{vocab_path} holds {len(saved)} tokens")
    labels = task.label_names
    if labels is not None:
        saved_labels = _saved_labels(vocab_path)
        if isinstance(getattr(model, "head", None), nn.Linear):
            _expect_rows(weights, "head.weight", len(saved_labels), name,
                         f"{vocab_path} names {len(saved_labels)} labels")
        if list(saved_labels) != list(labels):
            raise RnnlabError(f"the labels of the training data ({_few(labels)}) differ from "
                              f"those in {vocab_path} ({_few(saved_labels)})")
    if saved.itos != task.vocab.itos:
        change = _first_change(saved, task.vocab)
        raise RnnlabError(f"the vocabulary of the training data ({len(task.vocab)} tokens) "
                          f"differs from {vocab_path} ({len(saved)} tokens){change}: did the "
                          f"data or vocab.json change since the run started?")
    expected = model.state_dict()
    for key, tensor in weights.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise RnnlabError(
                f"{run_dir / ckpt.CONFIG} gives {key} the shape {tuple(expected[key].shape)} but "
                f"{run_dir / name} holds {tuple(tensor.shape)}: the config does not match the "
                f"weights")


def _expect_rows(weights: dict, key: str, rows: int, weights_name: str, what: str) -> None:
    if key in weights and weights[key].shape[0] != rows:
        raise RnnlabError(f"{what} but {key} in {weights_name} has {weights[key].shape[0]} rows: "
                          f"they do not belong together (restore the run's original file)")


def _saved_labels(path: Path) -> list[str]:
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise RnnlabError(f"{path} is corrupted (not a JSON object)") from None
    if not isinstance(labels, list):
        raise RnnlabError(f"{path} has no label names: is this a classification run?")
    return [str(label) for label in labels]


def _few(names: Any) -> str:
    names = list(names)
    return ", ".join(map(str, names[:5])) + (", ..." if len(names) > 5 else "")


def _first_change(a: Vocab, b: Vocab) -> str:
    for i, (x, y) in enumerate(zip(a.itos, b.itos, strict=False)):
        if x != y:
            return f"; id {i} is {x!r} there but {y!r} in the data"
    return ""
