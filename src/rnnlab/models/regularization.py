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


def embedding_dropout(embedding: nn.Module, tokens: torch.Tensor, p: float) -> torch.Tensor:
    """Look up ``tokens`` (B, T) with whole word types dropped (Gal & Ghahramani, 2016).

    Every occurrence of a dropped type in the batch is zeroed, so the model cannot rely on any
    single word; the others are scaled by 1 / (1 - p). ``embedding`` is any table with
    ``num_embeddings`` rows: ``nn.Embedding`` or an adaptive input.
    """
    if p == 0:
        return embedding(tokens)
    keep = torch.empty(embedding.num_embeddings, 1, device=tokens.device).bernoulli_(1 - p)
    return embedding(tokens) * (keep / (1 - p))[tokens]  # (B, T, E) * (B, T, 1)


def weight_drop(rnn: nn.Module, p: float) -> dict[str, torch.Tensor]:
    """Dropped copies of the hidden-to-hidden matrices of ``rnn``, by parameter name.

    DropConnect (Wan et al., 2013) on the recurrent weights, the weight-dropped LSTM of Merity
    et al. (2017): one mask per forward pass, so every time step of a window sees the same
    dropped connections, and the recurrent kernels (fused CPU, cuDNN) run unchanged. The
    parameters themselves are untouched: the caller runs the module with these tensors in
    their place (``torch.func.functional_call``), so saved weights keep their names.
    """
    if p == 0:
        return {}
    return {name: nn.functional.dropout(param, p, training=True)
            for name, param in rnn.named_parameters() if "weight_hh" in name}


def activation_regularization(raw: torch.Tensor, dropped: torch.Tensor, alpha: float,
                              beta: float) -> torch.Tensor:
    """AR and TAR on the last layer's outputs (Merity et al., 2017), both (B, T, H).

    ``alpha * mean(dropped**2)`` keeps the (dropped) activations small; ``beta *
    mean((raw[:, t] - raw[:, t-1])**2)`` keeps the undropped ones from changing fast.
    """
    penalty = raw.new_zeros(())
    if alpha:
        penalty = penalty + alpha * dropped.pow(2).mean()
    if beta and raw.shape[1] > 1:
        penalty = penalty + beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    return penalty
