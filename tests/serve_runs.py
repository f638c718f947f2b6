"""Tiny run directories made without training, for the serving, export and int8 tests."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnlab import checkpoint as ckpt
from rnnlab.api import LanguageModel
from rnnlab.config import ModelConfig, RunConfig
from rnnlab.data.vocab import EOS, PAD, UNK, Vocab
from rnnlab.models.classifier import RNNClassifier
from rnnlab.models.language_model import RNNLanguageModel

WORDS = ["the", "cat", "dog", "sees", "a", "bird", "runs", "home", "big", "small"]
CHARS = list("abcdefghij .\n")


def lm_run(path: Path, *, level: str = "word", cell: str = "lstm", layers: int = 2,
           seed: int = 0) -> Path:
    """A random (untrained) language model saved as a run; sharp enough that samples vary."""
    tokens = [UNK, EOS, *WORDS] if level == "word" else [UNK, *CHARS]
    vocab = Vocab(tokens, level=level)
    config = RunConfig()
    config.data.level = level
    config.model = ModelConfig(cell=cell, embedding_dim=16, hidden_size=24, num_layers=layers,
                               dropout=0.0, tie_weights=False)
    torch.manual_seed(seed)
    model = RNNLanguageModel(config.model, len(vocab))
    with torch.no_grad():
        model.decoder.weight.mul_(20)
    LanguageModel(model, vocab, config).save(path)
    return path


def classifier_run(path: Path, *, bidirectional: bool = False, seed: int = 0) -> Path:
    """A random two-label classifier saved as a run."""
    vocab = Vocab([PAD, UNK, *WORDS], level="word")
    config = RunConfig(task="classify")
    config.model = ModelConfig(cell="lstm", embedding_dim=16, hidden_size=24, num_layers=1,
                               dropout=0.0, tie_weights=False, bidirectional=bidirectional)
    torch.manual_seed(seed)
    model = RNNClassifier(config.model, len(vocab), 2)
    path.mkdir(parents=True)
    ckpt.save_config(config, path)
    ckpt.save_artifacts(path, vocab, ["neg", "pos"])
    ckpt.save_weights(model, path / ckpt.BEST)
    return path

