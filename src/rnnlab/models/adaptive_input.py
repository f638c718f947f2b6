"""Adaptive input: word vectors whose size shrinks with the word's rarity."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn


class AdaptiveEmbedding(nn.Module):
    """An embedding table split into frequency bands (Baevski & Auli, 2019, "Adaptive Input
    Representations for Neural Language Modeling").

    Ids are ranked by frequency, as rnnlab's vocabularies are. ``cutoffs`` split them into
    bands; band ``i`` stores vectors of ``embedding_dim / div_value**i`` numbers and projects
    them up to ``embedding_dim``. Over a vocabulary of hundreds of thousands of words most rows
    are rare words seen a handful of times, so most of a full table's parameters (and their
    optimiser states and gradients) are spent where there is least to learn.

    ``forward(tokens (B, T)) -> (B, T, embedding_dim)``, like ``nn.Embedding``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, cutoffs: list[int],
                 div_value: float = 4.0):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bounds = [0, *cutoffs, num_embeddings]
        self.bands = nn.ModuleList()
        self.projections = nn.ModuleList()
        for i, (low, high) in enumerate(pairwise(self.bounds)):
            size = max(1, int(embedding_dim // div_value**i))
            self.bands.append(nn.Embedding(high - low, size))
            # The most frequent band is already full-sized and needs no projection.
            self.projections.append(nn.Identity() if size == embedding_dim
                                    else nn.Linear(size, embedding_dim, bias=False))

    def reset_parameters(self, scale: float) -> None:
        """Uniform(-scale, scale) vectors, as the model initialises a plain table."""
        for band in self.bands:
            nn.init.uniform_(band.weight, -scale, scale)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = None
        for band, projection, (low, high) in zip(self.bands, self.projections,
                                                 pairwise(self.bounds), strict=True):
            # Every band looks up every token (clamped into its range) and keeps its own:
            # masking instead of gathering keeps the shapes static, for export and tracing.
            inside = ((tokens >= low) & (tokens < high)).unsqueeze(-1)  # (B, T, 1)
            vectors = projection(band((tokens - low).clamp(0, high - low - 1)))  # (B, T, E)
            vectors = vectors * inside
            out = vectors if out is None else out + vectors
        return out
