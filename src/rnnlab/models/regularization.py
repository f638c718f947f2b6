"""Regularisers for recurrent language models, each a small piece that composes with a model."""

from __future__ import annotations

import torch
from torch import nn


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by every time step (Gal & Ghahramani, 2016).

    Dropping the same units at every step regularises a recurrent model without destroying the
    signal it carries through time; awd-lstm-lm applies it to embeddings and outputs (Merity et
    al., 2017). On one-hot input a dropped unit is a character missing from a whole window.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Element-wise dropout, as ``F.dropout(x, p)`` in training, with a cheaper mask on a CPU.

    ``F.dropout`` draws one float Bernoulli sample per element, the slow part on a CPU; one
    32-bit draw gives two 15-bit uniform integers instead, and a few cheap passes do the rest.
    ``p`` is rounded to a multiple of 2**-15 and the kept units are scaled by the exact inverse
    of the kept fraction, so the expected output is still ``x``.
    """
    if p == 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    levels = 1 << 15
    keep = min(max(round((1 - p) * levels), 1), levels - 1)
    bits = torch.empty((x.numel() + 1) // 2, dtype=torch.int32, device=x.device).random_()
    # int32.random_() fills [0, 2**31): each 16-bit half carries 15 random bits below bit 15.
    uniform = bits.view(torch.int16)[: x.numel()].bitwise_and_(levels - 1).view(x.shape)
    mask = uniform.lt(keep).to(x.dtype).mul_(levels / keep)
    return x * mask


def embedding_dropout(embedding: nn.Embedding, tokens: torch.Tensor, p: float) -> torch.Tensor:
    """Look up ``tokens`` with whole rows of the table dropped (Gal & Ghahramani, 2016).

    Every occurrence of a dropped word type in the batch is zeroed, so the model cannot rely on
    any single word; the remaining rows are scaled by 1 / (1 - p).
    """
    if p == 0:
        return embedding(tokens)
    weight = embedding.weight
    keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
    return nn.functional.embedding(tokens, weight * keep, embedding.padding_idx)
