"""RNNLanguageModel: embedding -> recurrent stack -> decoder over the vocabulary."""

from __future__ import annotations

import torch
from torch import nn

from rnnlab.config import ModelConfig
from rnnlab.errors import RnnlabError
from rnnlab.models.cells import State, make_rnn
from rnnlab.models.regularization import LockedDropout, embedding_dropout


class RNNLanguageModel(nn.Module):
    """A recurrent language model.

    ``forward(tokens[B, T], state) -> (logits[B, T, V], state)``; the loss is the caller's.
    With ``tie_weights`` the decoder shares the embedding matrix (Press & Wolf, 2017; Inan et al.,
    2017); when the hidden size differs from the embedding size a linear projection bridges them.
    """

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        onehot = config.input == "onehot"
        if onehot and config.tie_weights:
            raise RnnlabError("model.tie_weights needs model.input = 'embedding' (not onehot)")
        input_size = vocab_size if onehot else config.embedding_dim
        self.embedding = None if onehot else nn.Embedding(vocab_size, config.embedding_dim)
        self.input_dropout = LockedDropout(config.dropout)
        self.rnn = make_rnn(
            config.cell, input_size, config.hidden_size, config.num_layers, dropout=config.dropout
        )
        self.output_dropout = LockedDropout(config.dropout)
        output_size = config.hidden_size
        self.projection = None
        if config.tie_weights and config.hidden_size != config.embedding_dim:
            self.projection = nn.Linear(config.hidden_size, config.embedding_dim, bias=False)
            output_size = config.embedding_dim
        self.decoder = nn.Linear(output_size, vocab_size)
        self._init_weights()
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight

    def _init_weights(self) -> None:
        if self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, input size) float inputs for the recurrent stack."""
        if self.embedding is None:
            return nn.functional.one_hot(tokens, self.vocab_size).float()
        p = self.config.embedding_dropout if self.training else 0.0
        return embedding_dropout(self.embedding, tokens, p)

    def forward(
        self, tokens: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        x = self.input_dropout(self.encode(tokens))  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        out = self.output_dropout(out)
        if self.projection is not None:
            out = self.projection(out)  # (B, T, E)
        return self.decoder(out), state  # (B, T, V)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """The zero state for ``batch_size`` streams."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        h = torch.zeros(shape, device=device)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once
