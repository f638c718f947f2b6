"""Shared fixtures: a tiny word corpus on disk and a helper that trains a tiny run quickly."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

import rnnlab
from cli_harness import CliRunner, shared_runner
from rnnlab.training.trainer import Callback, TrainResult

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
    "train.threads": 1,  # see one_thread below
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
def one_thread() -> Iterator[None]:
    """Run a test with one intra-op thread, then restore the previous count.

    On a shared machine, OpenMP threads that wait for a descheduled peer make small LSTMs many
    times slower, and one thread is as fast as two on these tiny models even when it is idle.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_finish(session: pytest.Session) -> None:
    # The CLI server takes seconds to import torch: when a selected test will use it, start it
    # at once, so that it imports on the other core while the first tests run.
    if any("cli_runner" in getattr(item, "fixturenames", ()) for item in session.items):
        shared_runner().start_server()


@pytest.fixture(scope="session")
def cli_runner() -> CliRunner:
    """The warm CLI runner of cli_harness.py, shared by every test that runs ``rnnlab``."""
    return shared_runner()


@pytest.fixture
def word_corpus(tmp_path: Path) -> Path:
    """A small word-level text file in ``tmp_path``."""
    return write_word_corpus(tmp_path / "corpus.txt")


def tiny_overrides(**extra: Any) -> dict[str, Any]:
    """Overrides for a tiny LM run (on the synthetic corpus unless ``data__text_path`` or
    ``data__train_path`` is given); ``extra`` uses ``section__key`` names."""
    values = {"data.corpus": "synthetic", "data.synthetic_tokens": 20_000,
              **TINY_MODEL, **TINY_DATA, **TINY_TRAIN}
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    if values.get("data.text_path") or values.get("data.train_path"):
        del values["data.corpus"]  # local files replace the built-in corpus
    return values


@pytest.fixture(scope="session")
def make_word_corpus() -> Callable[..., Path]:
    """``write_word_corpus`` for fixtures wider than one test (they cannot use ``word_corpus``)."""
    return write_word_corpus


@pytest.fixture(scope="session")
def make_tiny_overrides() -> Callable[..., dict[str, Any]]:
    """``tiny_overrides`` for tests that build their own config."""
    return tiny_overrides


TrainTiny = Callable[..., TrainResult]


@pytest.fixture
def train_tiny(tmp_path: Path) -> TrainTiny:
    """``train_tiny(name="run", callbacks=(), **overrides)``: a tiny run in ``tmp_path / name``.

    Overrides are given as ``section__key=value`` (e.g. ``train__max_steps=12``); the default is
    one epoch of a 1 x 32 LSTM on 20k synthetic tokens with a constant learning rate.
    """

    def train(name: str = "run", callbacks: Sequence[Callback] = (), **overrides: Any
              ) -> TrainResult:
        config = rnnlab.resolve_config(preset="synthetic", overrides=tiny_overrides(**overrides))
        return rnnlab.train(config, tmp_path / name, callbacks=callbacks)

    return train
