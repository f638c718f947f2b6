"""Carving validation (and test) data out of data that comes as one piece: one rule, both tasks.

Data without its own validation set gives up a fraction of itself, and a test set too when the
fractions name one:

* a stream of tokens (language modelling) is cut into contiguous runs in order, train first,
  so that valid (then test) is taken from its end; each cut moves to a nearby line end;
* labelled examples (classification) are drawn at random within each label (stratified, seeded
  by ``train.seed``), at least one example of each label staying in train; every piece keeps
  the file's order.

Which fractions: one file cut for either task (``--text``, a corpus shipped as one file) uses
``data.split`` (default 0.9/0.1); a training set given without a validation set (``--train``
without ``--valid``, imdb) uses :func:`held_out_fractions`: a language model's ``data.split``,
a classifier's ``data.valid_fraction`` (default 0.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnlab.config import DataConfig
from rnnlab.data.text import split_tokens
from rnnlab.errors import RnnlabError


def held_out_fractions(data: DataConfig, task: str) -> list[float]:
    """The (train, valid[, test]) fractions of a training set that comes without valid."""
    if task == "classify":
        return [1.0 - data.valid_fraction, data.valid_fraction]
    return list(data.split)


def carve(fractions: Sequence[float], *, tokens: list[str] | None = None,
          labels: Sequence[str] | None = None, seed: int = 0) -> list[Any]:
    """The (train, valid[, test]) pieces at ``fractions``: give ``tokens`` or ``labels``.

    ``tokens``: the token lists of each piece (contiguous runs; a piece of fraction 0 is
    empty). ``labels``: each piece's sorted example indices (stratified, seeded), ``None`` for
    a piece of fraction 0.
    """
    if (tokens is None) == (labels is None):
        raise ValueError("carve needs exactly one of tokens and labels")
    if tokens is not None:
        return split_tokens(tokens, list(fractions))
    pieces: list[np.ndarray | None] = []
    rest = np.arange(len(labels))
    remaining = 1.0
    for fraction in fractions[1:]:
        if fraction <= 0:
            pieces.append(None)
            continue
        keep, held = split_validation([labels[i] for i in rest], fraction / remaining, seed)
        pieces.append(rest[held])
        rest, remaining = rest[keep], remaining - fraction
    return [rest, *pieces]


def split_validation(
    labels: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, valid) indices with ``fraction`` of each label's examples in valid."""
    labels_array = np.asarray(labels)
    rng = np.random.default_rng(seed % 2**63)
    groups = [np.flatnonzero(labels_array == c) for c in sorted(set(labels))]
    valid_parts = []
    for group in groups:
        take = min(round(len(group) * fraction), len(group) - 1)  # keep one of each for training
        valid_parts.append(rng.permutation(group)[:take])
    valid = np.sort(np.concatenate(valid_parts)) if valid_parts else np.array([], dtype=np.int64)
    if valid.size == 0:
        raise RnnlabError(
            f"{len(labels_array)} examples are too few to hold out a validation fraction of "
            f"{fraction}; give --valid FILE or more data"
        )
    train = np.setdiff1d(np.arange(len(labels_array)), valid)
    return train, valid
