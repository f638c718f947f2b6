"""A trained text classifier: load it from a run directory, classify texts, measure it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab.classify.encoding import encode_texts
from rnnlab.classify.task import build_classification_task
from rnnlab.config import RunConfig
from rnnlab.data.batching import sorted_batches
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError
from rnnlab.models.classifier import RNNClassifier


class TextClassifier:
    """A trained recurrent text classifier with its vocabulary and label names.

    >>> clf = TextClassifier.load("runs/imdb")                     # doctest: +SKIP
    >>> clf.predict(["a moving film", "dull and too long"])        # doctest: +SKIP
    [{'label': 'pos', 'probs': {...}}, {'label': 'neg', 'probs': {...}}]
    """

    def __init__(self, model: RNNClassifier, vocab: Vocab, label_names: list[str],
                 config: RunConfig, run_dir: Path | None = None):
        self.model = model.eval()
        self.vocab = vocab
        self.label_names = label_names
        self.config = config
        self.run_dir = run_dir

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str = "cpu",
             weights: str = "best") -> TextClassifier:
        """Load ``RUN/model.safetensors`` (``weights="best"``) or the latest ``last`` checkpoint."""
        run_dir, config = ckpt.load_run_config(run_dir, "classify", "a classifier")
        vocab, labels = load_classifier_artifacts(run_dir)
        model = RNNClassifier(config.model, len(vocab), len(labels))
        return cls(ckpt.load_run_weights(model, run_dir, weights, device), vocab, labels, config,
                   run_dir)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """``[{"label": name, "probs": {name: p}}]`` for each text, in order (batched).

        A text without a token (nothing but HTML line breaks) gets
        ``{"label": None, "probs": None, "error": "the text has no tokens"}``.
        """
        return predict_texts(self.model, self.vocab, self.label_names, texts,
                             self.config.data.max_length, batch_size)

    def evaluate(self, split: str = "test", data_dir: str | None = None) -> dict[str, Any]:
        """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix on a split."""
        config = self.config
        if data_dir:  # a copy: the loaded model's config stays what the run recorded
            config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                           data_dir=data_dir))
        device = next(self.model.parameters()).device
        task = build_classification_task(config, device, vocab=self.vocab,
                                          label_names=self.label_names, splits=[split])
        task.model = self.model
        return task.report(split)


def load_classifier_artifacts(run_dir: str | Path) -> tuple[Vocab, list[str]]:
    """The vocabulary and class names of a classification run (see ``ckpt.save_artifacts``)."""
    vocab, labels = ckpt.load_artifacts(run_dir)
    if labels is None or len(labels) < 2:
        raise RnnlabError(f"{Path(run_dir) / ckpt.VOCAB} has no label names: is this a "
                          "classification run?")
    return vocab, labels


NO_TOKENS = "the text has no tokens"


def predict_texts(
    model: RNNClassifier, vocab: Vocab, label_names: Sequence[str], texts: Sequence[str],
    max_length: int, batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Classify ``texts``: ``[{"label": name, "probs": {name: p, ...}}, ...]`` in input order.

    Texts longer than ``max_length`` tokens are truncated, as in training. Blank texts are an
    error, as in training files; a text whose every character is markup (``<br />``) has no
    token to classify: its answer is ``{"label": None, "probs": None, "error": NO_TOKENS}``,
    and the other texts are unaffected.
    """
    if isinstance(texts, str):
        raise RnnlabError("predict_texts takes a list of texts, not a single string")
    if not texts:
        raise RnnlabError("no texts to classify")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise RnnlabError(f"text {i + 1} of {len(texts)} is empty")
    encoded, _ = encode_texts(texts, vocab, max_length)
    rows = [i for i, ids in enumerate(encoded) if ids]  # texts with something to read
    device = next(model.parameters()).device
    lengths = torch.tensor([len(encoded[i]) for i in rows], dtype=torch.int64)
    probs = torch.empty(len(rows), len(label_names))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index in sorted_batches(lengths, batch_size):
                batch = [torch.tensor(encoded[rows[i]]) for i in index]
                tokens = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True)  # (B, T), pad 0
                logits = model(tokens.to(device), lengths[index])  # (B, C)
                probs[torch.from_numpy(index)] = logits.float().softmax(dim=1).cpu()
    finally:
        model.train(was_training)
    results: list[dict[str, Any]] = [
        {"label": None, "probs": None, "error": NO_TOKENS} for _ in texts]
    best = probs.argmax(dim=1).tolist()
    for i, b, row in zip(rows, best, probs.tolist(), strict=True):
        results[i] = {"label": label_names[b], "probs": dict(zip(label_names, row, strict=True))}
    return results
