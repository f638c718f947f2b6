"""RNNLanguageModel: embedding -> recurrent stack -> output layer over the vocabulary."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rnnlab import fast
from rnnlab.config import ModelConfig
from rnnlab.models.adaptive_input import AdaptiveEmbedding
from rnnlab.models.cells import LayerStack, State, make_rnn
from rnnlab.models.regularization import (
    LockedDropout,
    activation_regularization,
    embedding_dropout,
    weight_drop,
)


def _input_table(config: ModelConfig, vocab_size: int, cutoffs: list[int]) -> nn.Module | None:
    """What turns ids into vectors: none for one-hot input; adaptive where a cutoff fits."""
    if config.input == "onehot":
        return None
    if config.input == "adaptive" and cutoffs:
        return AdaptiveEmbedding(vocab_size, config.embedding_dim, cutoffs)
    return nn.Embedding(vocab_size, config.embedding_dim)


class RNNLanguageModel(nn.Module):
    """A recurrent language model.

    ``forward(tokens[B, T], state) -> (logits[B, T, V], state)`` for sampling and inspection;
    ``nll(tokens, targets, state)`` for training and evaluation, which lets the adaptive softmax
    skip the clusters a batch does not need. With ``tie_weights`` the decoder shares the embedding
    matrix (Press & Wolf, 2017; Inan et al., 2017); when the hidden size differs from the embedding
    size a linear projection bridges them.

    ``model.input``: a table of word vectors, an adaptive one (shorter vectors for rarer words,
    Baevski & Auli, 2019), or none (one-hot input).

    AWD-LSTM's pieces (Merity et al., 2017) are each a config switch: ``weight_drop`` on the
    recurrent matrices, per-layer ``hidden_sizes``, and AR/TAR in ``regularized_nll``.

    The recurrent stack and the loss each have a fast path (see ``rnnlab.fast``) behind one
    ``if fast.enabled()``; the code past that branch is the plain computation it stands for.
    """

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        onehot = config.input == "onehot"
        input_size = vocab_size if onehot else config.embedding_dim
        cutoffs = [c for c in config.cutoffs if c < vocab_size - 1]
        self.embedding = _input_table(config, vocab_size, cutoffs)
        # Dropout on the non-recurrent connections only (Zaremba et al., 2014); the input and
        # output masks are locked over time (Gal & Ghahramani, 2016; Merity et al., 2017).
        p_input, p_between, p_output = config.dropout_rates()
        self.input_dropout = LockedDropout(p_input)
        self.rnn: nn.Module = (
            make_rnn(config.cell, input_size, config.hidden_size, config.num_layers,
                     dropout=p_between) if config.hidden_sizes is None
            else LayerStack(config.cell, input_size, config.hidden_sizes, p_between))
        self.output_dropout = LockedDropout(p_output)
        feature_size = config.layer_sizes()[-1]
        self.projection = None
        if config.tie_weights and feature_size != config.embedding_dim:
            self.projection = nn.Linear(feature_size, config.embedding_dim, bias=False)
            feature_size = config.embedding_dim
        self.decoder: nn.Linear | None = None
        self.adaptive: nn.AdaptiveLogSoftmaxWithLoss | None = None
        if config.output == "adaptive" and cutoffs:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(feature_size, vocab_size, cutoffs, 4.0)
        else:
            self.decoder = nn.Linear(feature_size, vocab_size)
        self._init_weights()
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight

    def _init_weights(self) -> None:
        if isinstance(self.embedding, AdaptiveEmbedding):
            self.embedding.reset_parameters(0.1)
        elif self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if self.decoder is not None:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, input size) float inputs for the recurrent stack."""
        if self.embedding is None:
            return nn.functional.one_hot(tokens, self.vocab_size).float()
        p = self.config.embedding_dropout if self.training else 0.0
        return embedding_dropout(self.embedding, tokens, p)

    def recurrent(
        self, tokens: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """(B, T) ids -> (B, T, H) outputs of the last recurrent layer, and the new state."""
        x = self.input_dropout(self.encode(tokens))  # (B, T, E)
        # Weight drop: the stack runs with dropped copies of its hidden-to-hidden matrices.
        dropped = weight_drop(self.rnn, self.config.weight_drop) if self.training else {}
        if fast.enabled():  # fast path: the stack layer by layer on a CPU (rnnlab.fast.stack)
            return fast.run_stack(self.rnn, x, state, dropped)
        if dropped:
            return torch.func.functional_call(self.rnn, dropped, (x, state))
        return self.rnn(x, state)

    def features(
        self, tokens: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """(B, T) ids -> (B, T, D) inputs of the output layer, and the new state."""
        out, state = self.recurrent(tokens, state)
        return self.project(self.output_dropout(out)), state

    def project(self, out: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T, D): the bridge to a tied embedding of another size, if any."""
        return out if self.projection is None else self.projection(out)

    def forward(
        self, tokens: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        out, state = self.features(tokens, state)
        if self.adaptive is not None:  # normalised log-probabilities serve as logits
            return self.adaptive.log_prob(out.flatten(0, 1)).view(*out.shape[:2], -1), state
        return self.decoder(out), state  # (B, T, V)

    def nll(
        self, tokens: torch.Tensor, targets: torch.Tensor, state: State | None = None,
        reduction: str = "mean", logits_buffer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Negative log-likelihood of ``targets`` (B, T) given ``tokens`` (B, T), in nats.

        ``logits_buffer``: storage the fast full softmax may reuse for its logits when no
        gradient is wanted (see ``fast.logits_buffer``); ignored otherwise.
        """
        out, state = self.features(tokens, state)  # (B, T, D)
        return self.output_nll(out, targets, reduction, logits_buffer), state

    def regularized_nll(
        self, tokens: torch.Tensor, targets: torch.Tensor, state: State | None = None,
        ar_alpha: float = 0.0, tar_beta: float = 0.0,
    ) -> tuple[torch.Tensor, State]:
        """The mean ``nll`` plus AR and TAR on the last layer's outputs (Merity et al., 2017):
        the training loss; evaluation reports the plain ``nll``."""
        raw, state = self.recurrent(tokens, state)  # (B, T, H)
        dropped = self.output_dropout(raw)
        loss = self.output_nll(self.project(dropped), targets, "mean", None)
        if ar_alpha or tar_beta:
            loss = loss + activation_regularization(raw, dropped, ar_alpha, tar_beta)
        return loss, state

    def output_nll(self, out: torch.Tensor, targets: torch.Tensor, reduction: str,
                   logits_buffer: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) features and (B, T) targets -> their negative log-likelihood."""
        if self.adaptive is not None:
            token_nll = -self.adaptive(out.flatten(0, 1), targets.flatten()).output
            return token_nll.mean() if reduction == "mean" else token_nll.sum()
        if fast.enabled():  # fast path: output layer and loss fused (rnnlab.fast.softmax_loss)
            return fast.linear_cross_entropy(
                out.flatten(0, 1), self.decoder.weight, self.decoder.bias, targets.flatten(),
                reduction, logits_buffer)
        logits = self.decoder(out)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """The zero state for ``batch_size`` streams (a list of per-layer states for layers
        of their own sizes)."""
        def zeros(layers: int, size: int) -> State:
            h = torch.zeros(layers, batch_size, size, device=device)
            return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

        if self.config.hidden_sizes is None:
            return zeros(self.config.num_layers, self.config.hidden_size)
        return [zeros(1, size) for size in self.config.hidden_sizes]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once
