"""Shared fixtures: a tiny word corpus on disk and a helper that trains a tiny run quickly."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rnnlab
from rnnlab.training.trainer import TrainResult

# Small enough that a run of a few dozen steps takes a second or two on 2 shared CPU cores.
TINY_MODEL: dict[str, Any] = {
    "model.cell": "lstm",
    "model.embedding_dim": 16,
    "model.hidden_size": 32,
    "model.num_layers": 1,
    "model.dropout": 0.0,
    "model.tie_weights": False,
}
TINY_DATA: dict[str, Any] = {
    "data.batch_size": 8,
    "data.bptt": 10,
    "data.eval_batch_size": 4,
}
TINY_TRAIN: dict[str, Any] = {
    "train.epochs": 1,
    "train.lr": 3e-3,
    "train.schedule": "constant",
    "train.warmup_steps": 0,
    "train.device": "cpu",
    "train.seed": 7,
}

_SUBJECTS = ["the cat", "a dog", "the old man", "my friend", "the bird", "a child"]
_VERBS = ["sees", "likes", "finds", "follows", "watches", "hears"]
_OBJECTS = ["the ball", "a tree", "the river", "some bread", "the house", "a song"]
_ENDINGS = ["today", "again", "in the morning", "at night", "with joy", ""]


def write_word_corpus(path: Path, lines: int = 400, seed: int = 0) -> Path:
    """A deterministic, grammatical toy text: ~3k words over a vocabulary of ~40."""
    rng = random.Random(seed)
    text = []
    for _ in range(lines):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS),
                 rng.choice(_ENDINGS)]
        text.append(" ".join(w for w in words if w))
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def word_corpus(tmp_path: Path) -> Path:
    """A small word-level text file in ``tmp_path``."""
    return write_word_corpus(tmp_path / "corpus.txt")


def tiny_overrides(**extra: Any) -> dict[str, Any]:
    """Overrides for a tiny synthetic-corpus LM run; ``extra`` uses ``section__key`` names."""
    values = {"data.corpus": "synthetic", "data.synthetic_tokens": 20_000,
              **TINY_MODEL, **TINY_DATA, **TINY_TRAIN}
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return values


TrainTiny = Callable[..., TrainResult]


@pytest.fixture
def train_tiny(tmp_path: Path) -> TrainTiny:
    """``train_tiny(name="run", **overrides)`` trains a tiny run into ``tmp_path / name``.

    Overrides are given as ``section__key=value`` (e.g. ``train__max_steps=12``); the default is
    one epoch of a 1 x 32 LSTM on 20k synthetic tokens with a constant learning rate.
    """

    def train(name: str = "run", **overrides: Any) -> TrainResult:
        config = rnnlab.resolve_config(preset="synthetic", overrides=tiny_overrides(**overrides))
        return rnnlab.train(config, tmp_path / name)

    return train
