"""The same language model trained the textbook way, in plain PyTorch, as a yardstick.

``lm_throughput.py --baseline`` times this loop in the same rounds as rnnlab's own step, so its
speed-up is measured on whatever machine runs it, side by side, rather than quoted from another
machine. The loop is what a tutorial writes: sequence-first batches, ``nn.Embedding`` ->
dropout -> ``nn.LSTM`` (PyTorch's own dropout between layers) -> dropout -> ``nn.Linear``,
``F.cross_entropy`` over the logits, ``clip_grad_norm_`` and a stock ``torch.optim`` optimiser
with its default settings. Of rnnlab it uses only the config, for the sizes and the recipe.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rnnlab.config import RunConfig

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}


class PlainLM(nn.Module):
    """Embedding (or one-hot) -> dropout -> recurrent stack -> dropout -> linear, seq-first.

    ``dropout``: the (input, between layers, output) rates, as ``ModelConfig.dropout_rates()``.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int,
                 cell: str, dropout: tuple[float, float, float], tie_weights: bool,
                 onehot: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = None if onehot else nn.Embedding(vocab_size, embedding_dim)
        first, between, last = dropout
        self.drop_in, self.drop_out = nn.Dropout(first), nn.Dropout(last)
        self.rnn = CELLS[cell](vocab_size if onehot else embedding_dim, hidden_size, num_layers,
                               dropout=between if num_layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            if hidden_size != embedding_dim:
                raise ValueError("the plain baseline ties weights only when sizes are equal")
            self.decoder.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor, hidden):  # tokens: (T, B)
        if self.embedding is None:  # char-rnn style one-hot inputs
            inputs = F.one_hot(tokens, self.vocab_size).float()
        else:
            inputs = self.embedding(tokens)
        out, hidden = self.rnn(self.drop_in(inputs), hidden)
        return self.decoder(self.drop_out(out)), hidden


class PlainTrainer:
    """Trains a ``PlainLM`` one window of ``ids`` at a time (truncated BPTT, state carried)."""

    def __init__(self, config: RunConfig, vocab_size: int, ids: torch.Tensor):
        m, d, t = config.model, config.data, config.train
        if m.cell not in CELLS or m.output != "softmax":
            raise ValueError(f"no plain baseline for cell {m.cell!r} with output {m.output!r}")
        self.model = PlainLM(vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.cell,
                             m.dropout_rates(), m.tie_weights, onehot=m.input == "onehot")
        self.model.train()
        optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
                      "adamw": torch.optim.AdamW}
        self.optimizer = optimizers[t.optimizer](self.model.parameters(), lr=t.lr,
                                                 weight_decay=t.weight_decay)
        self.vocab_size, self.bptt, self.clip = vocab_size, d.bptt, t.clip
        columns = ids.numel() // d.batch_size
        # (T, B): column b is the b-th contiguous slice of the stream.
        self.stream = ids[: columns * d.batch_size].view(d.batch_size, columns).t().contiguous()
        self.position = 0
        self.hidden = None

    def step(self) -> int:
        """One training step on the next window; returns the number of targets."""
        if self.position + self.bptt + 1 > self.stream.shape[0]:
            self.position, self.hidden = 0, None
        inputs = self.stream[self.position : self.position + self.bptt]
        targets = self.stream[self.position + 1 : self.position + 1 + self.bptt]
        self.position += self.bptt
        hidden = self.hidden
        if hidden is not None:  # truncated BPTT: keep the values, cut the graph
            hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) \
                else hidden.detach()
        self.optimizer.zero_grad()
        logits, self.hidden = self.model(inputs, hidden)
        loss = F.cross_entropy(logits.view(-1, self.vocab_size), targets.reshape(-1))
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return targets.numel()
