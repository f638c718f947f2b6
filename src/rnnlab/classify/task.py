"""Text classification as a Task: length-bucketed batches, cross-entropy, accuracy and a report.

The run directory keeps what inference needs besides the weights: ``vocab.json`` holds the
vocabulary plus a ``labels`` list (the class names in class-id order); see
:func:`rnnlab.checkpoint.save_artifacts`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from rnnlab import checkpoint as ckpt
from rnnlab.classify.data import (
    Examples,
    check_labels,
    read_examples,
    split_examples,
)
from rnnlab.classify.data import (
    label_names as sorted_label_names,
)
from rnnlab.classify.encoding import Batch, EncodedSet, Interner, build_vocab, encode_set
from rnnlab.classify.imdb import load_corpus
from rnnlab.classify.metrics import SplitPredictions, classification_report
from rnnlab.config import RunConfig
from rnnlab.data.batching import bucket_batches, sorted_batches
from rnnlab.data.corpora import SPLITS
from rnnlab.data.splits import held_out_fractions
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError
from rnnlab.models.classifier import RNNClassifier


class ClassificationTask:
    """Train an :class:`RNNClassifier` on ``sets["train"]``; pick the best by valid accuracy.

    ``vocab`` and ``label_names`` are what a run directory must save (:meth:`save_artifacts`);
    ``sets`` maps ``train``/``valid`` (and ``test`` when there is one) to encoded examples.
    """

    best_metric = "accuracy"
    higher_is_better = True
    unit = "examples"

    def __init__(
        self, model: RNNClassifier, vocab: Vocab, label_names: Sequence[str],
        sets: dict[str, EncodedSet], *, batch_size: int, eval_batch_size: int, seed: int,
        device: torch.device, stats: dict[str, Any] | None = None,
    ):
        self.model = model
        self.vocab = vocab
        self.label_names = list(label_names)
        self.sets = sets
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.device = device
        self.stats = stats or {}

    # --- training ----------------------------------------------------------------------------

    def shard(self, rank: int, world: int) -> bool:
        """False: every rank draws the same batches and the Trainer gives each its slice."""
        return False

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.sets["train"]) / self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        train = self.sets["train"]
        for index in bucket_batches(train.lengths, self.batch_size, self.seed, epoch)[start:]:
            yield train.batch(torch.from_numpy(index))

    def train_loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        logits = self._logits(batch)  # (B, C)
        return F.cross_entropy(logits, batch.labels.to(self.device)), len(batch)

    def lr_factor(self, batch: Any) -> float:
        return 1.0  # every batch takes the scheduled learning rate

    def _logits(self, batch: Batch) -> torch.Tensor:
        tokens = batch.tokens.to(self.device, non_blocking=True)
        return self.model(tokens, batch.lengths)  # lengths stay on the CPU for packing

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(self, split: str) -> dict[str, float]:
        """Mean cross-entropy and accuracy on ``split``."""
        result = self.predict_split(split)
        return {"loss": result.loss, "accuracy": result.accuracy}

    def report(self, split: str) -> dict[str, Any]:
        """The full report on ``split``: loss, accuracy, per-class scores, confusion matrix."""
        result = self.predict_split(split)
        return {"split": split, "loss": result.loss,
                **classification_report(result.predictions, result.targets, self.label_names)}

    def predict_split(self, split: str) -> SplitPredictions:
        """Predicted and true class ids of every example of ``split`` (in the set's order)."""
        if split not in self.sets:
            raise RnnlabError(f"this run has no {split} set (available: {', '.join(self.sets)})")
        data = self.sets[split]
        predictions = torch.empty(len(data), dtype=torch.int64)
        total = 0.0
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for index in sorted_batches(data.lengths, self.eval_batch_size):
                    index = torch.from_numpy(index)
                    batch = data.batch(index)
                    logits = self._logits(batch).float()  # (B, C)
                    labels = batch.labels.to(logits.device)
                    total += float(F.cross_entropy(logits, labels, reduction="sum"))
                    predictions[index] = logits.argmax(dim=1).cpu()
        finally:
            self.model.train(was_training)
        return SplitPredictions(predictions, data.labels, total / len(data))

    # --- run directory and resume ------------------------------------------------------------

    def save_artifacts(self, run_dir: str | Path) -> None:
        """The vocabulary and the class names: what the saved weights' ids mean."""
        ckpt.save_artifacts(run_dir, self.vocab, self.label_names)

    def state_dict(self) -> dict[str, Any]:
        # Batches are a pure function of (seed, epoch); only the data's identity is worth
        # checking on resume, since other data would silently give other batches.
        return {"train_examples": len(self.sets["train"]), "labels": list(self.label_names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = self.state_dict()
        for key, value in state.items():
            if key in expected and expected[key] != value:
                raise RnnlabError(
                    f"the checkpoint was trained with {key} = {value}, but the data now gives "
                    f"{expected[key]}; resume with the same data"
                )


# --- building from a config ------------------------------------------------------------------


def load_labelled_splits(config: RunConfig) -> dict[str, Examples]:
    """The raw train/valid[/test] examples that ``config.data`` names.

    Sources: a known corpus (imdb: its train and test; valid carved from train),
    ``data.train_path`` with optional ``data.valid_path``/``data.test_path`` (valid carved from
    train when absent), or one file ``data.text_path`` cut by ``data.split``.
    Carving follows :mod:`rnnlab.data.splits`.
    """
    data, seed = config.data, config.train.seed
    fields = {"text_field": data.text_field, "label_field": data.label_field}
    if data.corpus:
        sets = load_corpus(data.corpus, data.data_dir)
    elif data.train_path:
        sets = {"train": read_examples(data.train_path, **fields)}
        for split, path in (("valid", data.valid_path), ("test", data.test_path)):
            if path:
                sets[split] = read_examples(path, **fields)
    elif data.text_path:
        pieces = split_examples(read_examples(data.text_path, **fields), data.split, seed)
        sets = {s: p for s, p in zip(SPLITS, pieces, strict=False) if p is not None}
    else:
        raise RnnlabError("classification needs --corpus imdb, --train FILE or --text FILE")
    if "valid" not in sets:
        sets["train"], sets["valid"] = split_examples(
            sets["train"], held_out_fractions(data, "classify"), seed)
    return sets


def build_classification_task(
    config: RunConfig, device: torch.device, *, vocab: Vocab | None = None,
    label_names: Sequence[str] | None = None, splits: Sequence[str] | None = None,
) -> ClassificationTask:
    """Load the data, build (or reuse) the vocabulary and labels, and make the model.

    Pass the ``vocab`` and ``label_names`` saved in a run directory to evaluate a trained model
    on its data; without them both are built from the training split alone. ``splits`` limits
    which sets are tokenized and kept (e.g. ``["test"]`` for evaluation; train is needed, and
    kept, only when the vocabulary is built here).
    """
    data = config.data
    examples = load_labelled_splits(config)
    names = (list(label_names) if label_names is not None
             else sorted_label_names(examples["train"].labels))
    check_labels(examples["train"], names,
                 [examples[s] for s in ("valid", "test") if s in examples])
    wanted = [s for s in examples if splits is None or s in splits or (s == "train" and not vocab)]
    missing = sorted(set(splits or ()) - set(examples))
    if missing:
        raise RnnlabError(f"the data has no {', '.join(missing)} set (it has: "
                          f"{', '.join(examples)}); give --test FILE or use data.split")
    interner = Interner()
    tokenized = {s: interner.tokenize(examples[s].texts, data.max_length, data.level)
                 for s in wanted}
    for split in wanted:
        _check_skipped(split, examples[split], tokenized[split].skipped)
    if vocab is None:
        vocab = build_vocab(interner, tokenized["train"].ids, min_freq=data.min_freq,
                            max_size=data.max_vocab, level=data.level)
    sets = {s: encode_set(tokenized[s], examples[s].labels, interner, vocab, names) for s in wanted}
    model = RNNClassifier(config.model, len(vocab), len(names)).to(device)
    stats = {
        "examples": {s: len(e) for s, e in sets.items()},
        "truncated": {s: e.truncated for s, e in sets.items()},
        "skipped_empty": {s: e.skipped for s, e in sets.items()},
        "max_length": data.max_length,
        "vocab": len(vocab),
        "labels": names,
        "class_counts": {s: np.bincount(e.labels.numpy(), minlength=len(names)).tolist()
                         for s, e in sets.items()},
        "mean_length": {s: round(float(e.lengths.double().mean()), 1) for s, e in sets.items()},
    }
    return ClassificationTask(
        model, vocab, names, sets, batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size, seed=config.train.seed, device=device,
        stats=stats,
    )


def _check_skipped(split: str, examples: Examples, skipped: Sequence[int]) -> None:
    """Warn about texts left out for having no token; a split left with none is an error."""
    if not skipped:
        return
    first = f"{examples.source}, line {examples.lines[skipped[0]]}"
    plural = "s" if len(skipped) > 1 else ""
    if len(skipped) == len(examples):
        raise RnnlabError(f"{examples.source}: no {split} text has a token (each is empty once "
                          f"HTML line breaks are removed, e.g. {first})")
    warnings.warn(f"skipped {len(skipped)} {split} text{plural} of {len(examples)} with no "
                  f"tokens (nothing but HTML line breaks; first: {first})", stacklevel=3)
