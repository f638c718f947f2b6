"""A small synthetic run that checkpoints after every step, for the crash and signal tests,
and the check that a run directory holds a loadable, resumable state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab.api import LanguageModel
from rnnlab.data.vocab import Vocab

# 2 epochs of ~50 variable-length windows; a checkpoint after every step, so that a run holds
# many checkpoints to kill it in; dropout and variable BPTT make the RNG part of the state.
OVERRIDES: dict[str, Any] = {
    "data.corpus": "synthetic", "data.synthetic_tokens": 4_000, "data.batch_size": 8,
    "data.bptt": 10, "data.eval_batch_size": 8, "data.variable_bptt": True,
    "model.embedding_dim": 16, "model.hidden_size": 16, "model.num_layers": 1,
    "model.dropout": 0.1, "model.tie_weights": True, "train.epochs": 2, "train.eval_every": 20,
    "train.checkpoint_every": 1, "train.log_every": 3, "train.device": "cpu",
    "train.threads": 1, "train.seed": 3,
}


def set_args(overrides: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in overrides.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--set", f"{key}={text}"]
    return args


TRAIN_ARGS = ["train", "--preset", "synthetic", *set_args(OVERRIDES), "--samples", "0",
              "--no-plot"]
# Finishing a crashed run: checkpoints between evaluations change no number of the run (they
# only read its state), and skipping them saves ~100 fsynced writes per test.
FINISH_ARGS = ["train", "--resume", "run", "--samples", "0", "--no-plot", "--set",
               "train.checkpoint_every=0"]


def assert_loadable(run: Path) -> int:
    """Everything a user or a resume reads from ``run`` loads; returns the checkpoint's step."""
    config = ckpt.load_config(run)
    assert config.train.seed == OVERRIDES["train.seed"]
    Vocab.load(run / ckpt.VOCAB)
    state = ckpt.load_trainer_state(run / ckpt.TRAINER)
    assert (run / state["weights"]).exists(), f"trainer.pt names a missing {state['weights']}"
    last = LanguageModel.load(run, weights="last")
    assert all(bool(torch.isfinite(p).all()) for p in last.model.parameters())
    if (run / ckpt.BEST).exists():
        LanguageModel.load(run)
    ckpt.read_metrics(run)  # a torn last line is tolerated, nothing else may be broken
    return int(state["step"])
