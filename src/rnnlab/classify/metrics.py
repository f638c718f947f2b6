"""Classification metrics: accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class SplitPredictions:
    predictions: torch.Tensor  # (N,) class ids
    targets: torch.Tensor  # (N,)
    loss: float  # mean cross-entropy

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.targets).double().mean())


def classification_report(
    predictions: torch.Tensor | Sequence[int], targets: torch.Tensor | Sequence[int],
    names: Sequence[str],
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro F1 and the confusion matrix.

    ``confusion[i][j]`` counts examples of true class ``i`` predicted as ``j``. A score whose
    denominator is zero (a class never predicted, or absent) is 0.
    """
    predicted = np.asarray(predictions, dtype=np.int64)
    true = np.asarray(targets, dtype=np.int64)
    k = len(names)
    confusion = np.bincount(true * k + predicted, minlength=k * k).reshape(k, k)
    hits = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    precision = _ratio(hits, confusion.sum(axis=0))
    recall = _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(names)
    }
    return {
        "accuracy": float(hits.sum() / max(true.size, 1)),
        "macro_f1": float(f1.mean()),
        "examples": int(true.size),
        "labels": list(names),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)),
                     where=denominator > 0)
