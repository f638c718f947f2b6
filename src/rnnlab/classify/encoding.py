"""Labelled texts as tensors: token ids in a vocabulary whose id 0 is ``<pad>``, and batches.

Pipeline: :func:`~rnnlab.data.text.classifier_tokens` -> truncate to ``max_length`` tokens ->
provisional ids (:class:`Interner`) -> a :class:`Vocab` of the training tokens -> an
:class:`EncodedSet` -> padded :class:`Batch` es of (tokens, lengths, labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rnnlab.data.text import classifier_tokens
from rnnlab.data.vocab import PAD, UNK, Vocab

SPECIALS = (PAD, UNK)  # <pad> = 0, <unk> = 1
PAD_ID = 0


@dataclass
class Tokenized:
    """Texts as truncated token lists, interned to provisional ids (one table for all sets).

    A text without a single token (e.g. nothing but ``<br />``) has nothing to pool over, so it
    is left out of ``ids``; ``skipped`` holds the positions of such texts in the input.
    """

    ids: list[np.ndarray]
    truncated: int  # how many texts were longer than max_length (cut, not rejected)
    skipped: list[int] = field(default_factory=list)

    def keep(self, items: Sequence) -> list:
        """The entries of ``items`` (one per input text) whose texts are in ``ids``."""
        if not self.skipped:
            return list(items)
        left_out = set(self.skipped)
        return [item for i, item in enumerate(items) if i not in left_out]


@dataclass
class Interner:
    """Token strings -> provisional ids, so that 50k reviews are not held as Python strings."""

    index: dict[str, int] = field(default_factory=dict)

    def tokenize(self, texts: Sequence[str], max_length: int, level: str = "word") -> Tokenized:
        ids, truncated, skipped, index = [], 0, [], self.index
        for position, text in enumerate(texts):
            tokens = classifier_tokens(text, level)
            if not tokens:
                skipped.append(position)
                continue
            if len(tokens) > max_length:
                truncated += 1
                tokens = tokens[:max_length]
            # New tokens get ids in set order; that order never reaches the vocabulary, whose
            # ties are broken by position in the text (see build_vocab).
            for token in set(tokens).difference(index):
                index[token] = len(index)
            ids.append(np.fromiter(map(index.__getitem__, tokens), np.int64, len(tokens)))
        return Tokenized(ids, truncated, skipped)

    def tokens(self) -> list[str]:
        return list(self.index)


def build_vocab(
    interner: Interner, train: Sequence[np.ndarray], *, min_freq: int = 1, max_size: int = 0,
    level: str = "word",
) -> Vocab:
    """A vocabulary of the training tokens: ``<pad>`` (id 0), ``<unk>``, then the tokens seen
    ``min_freq`` times, most frequent first, ties by first appearance; ``max_size`` (0: no limit)
    counts the specials, as in :meth:`Vocab.build`."""
    flat = np.concatenate(list(train)) if len(train) else np.array([], dtype=np.int64)
    counts = np.bincount(flat, minlength=len(interner.index))
    first = np.zeros(len(counts), dtype=np.int64)
    seen, first_index = np.unique(flat, return_index=True)
    first[seen] = first_index
    order = np.lexsort((first, -counts))  # by count descending, then first appearance
    order = order[counts[order] >= min_freq]
    names = interner.tokens()
    kept = [names[i] for i in order if names[i] not in SPECIALS]
    if max_size:
        kept = kept[: max(0, max_size - len(SPECIALS))]
    return Vocab([*SPECIALS, *kept], level=level, unk=UNK)


@dataclass
class Batch:
    """Padded token ids (B, T) with <pad> = 0, true lengths (B,) and class ids (B,), on CPU."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class EncodedSet:
    """A labelled set as one flat id tensor with per-example offsets and lengths."""

    flat: torch.Tensor  # (N_tokens,) int64
    offsets: torch.Tensor  # (N,) start of each example in flat
    lengths: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,) class ids
    truncated: int = 0
    skipped: int = 0  # texts left out for having no token

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def batch(self, index: torch.Tensor) -> Batch:
        """The examples at ``index``, right-padded with <pad> = 0."""
        lengths = self.lengths[index]  # (B,)
        steps = torch.arange(int(lengths.max()))  # (T,)
        mask = steps[None, :] < lengths[:, None]  # (B, T)
        positions = (self.offsets[index][:, None] + steps[None, :]).clamp(max=self.flat.numel() - 1)
        tokens = torch.where(mask, self.flat[positions], PAD_ID)  # (B, T)
        return Batch(tokens, lengths, self.labels[index])


def encode_set(
    tokenized: Tokenized, labels: Sequence[str], interner: Interner, vocab: Vocab,
    names: Sequence[str],
) -> EncodedSet:
    """Map provisional ids to vocabulary ids (unknown -> <unk>) and labels to class ids.

    ``labels`` has one entry per tokenized text, including those left out for having no token.
    """
    lookup = np.array([vocab.id(t) for t in interner.tokens()], dtype=np.int64)
    lookup = lookup if lookup.size else np.zeros(1, dtype=np.int64)
    lengths = np.array([row.size for row in tokenized.ids], dtype=np.int64)
    flat = np.concatenate(tokenized.ids) if tokenized.ids else np.array([], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths.size else lengths
    class_of = {name: i for i, name in enumerate(names)}
    return EncodedSet(
        flat=torch.from_numpy(lookup[flat]),
        offsets=torch.from_numpy(offsets.astype(np.int64)),
        lengths=torch.from_numpy(lengths),
        labels=torch.tensor([class_of[label] for label in tokenized.keep(labels)],
                            dtype=torch.int64),
        truncated=tokenized.truncated,
        skipped=len(tokenized.skipped),
    )


def encode_texts(
    texts: Sequence[str], vocab: Vocab, max_length: int
) -> tuple[list[list[int]], int]:
    """Ids of each text (truncated to ``max_length``) with a saved vocabulary, and how many were
    truncated; for inference, where no training data is at hand. The vocabulary's level says
    how the texts were cut: words, or characters."""
    encoded, truncated = [], 0
    for text in texts:
        tokens = classifier_tokens(text, vocab.level)
        truncated += len(tokens) > max_length
        encoded.append(vocab.encode(tokens[:max_length]))
    return encoded, truncated
