"""RNNClassifier: embedding -> recurrent stack -> pooling over time -> linear to class logits.

Two execution paths give the same function (tested to 1e-5):

* ``packed``: one call of the (possibly bidirectional, stacked) recurrent module on a
  ``PackedSequence``; cuDNN runs it fused, so this is the path on CUDA.
* ``dense``: padded (B, T) batches. On the CPU only dense LSTM input reaches PyTorch's fast
  oneDNN kernel, and packed batches pay per-step bookkeeping, so this is the path elsewhere.
  Right padding is harmless to a forward direction (pads come after every real token and are
  masked out of the pooling), but a backward direction would start its pass on the pads. The
  dense path therefore runs each backward direction, layer by layer, over every sequence
  reversed *within its own length* (an index gather), so it never reads a pad before a real
  token. The per-layer calls reuse the stacked module's own parameters (``functional_call``),
  so both paths share one set of weights and one ``state_dict`` layout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from rnnlab.config import ModelConfig
from rnnlab.errors import RnnlabError
from rnnlab.models.cells import make_rnn
from rnnlab.models.regularization import embedding_dropout

PATHS = ("auto", "packed", "dense")


class RNNClassifier(nn.Module):
    """A recurrent text classifier.

    ``forward(tokens[B, T], lengths[B]) -> logits[B, C]`` (raw logits; the caller applies
    cross-entropy). Token id 0 is padding; positions ``t >= lengths[b]`` never affect the result.
    ``path`` picks the execution path: ``"auto"`` (packed on CUDA, dense elsewhere),
    ``"packed"`` or ``"dense"``.
    """

    def __init__(
        self, config: ModelConfig, vocab_size: int, num_classes: int, *, path: str = "auto"
    ):
        super().__init__()
        if num_classes < 2:
            raise RnnlabError(f"a classifier needs at least 2 classes, got {num_classes}")
        if config.input != "embedding":
            raise RnnlabError("the classifier reads embeddings: set model.input = 'embedding'")
        self.config = config
        self.path = path
        self.num_classes = num_classes
        hidden, layers = config.hidden_size, config.num_layers
        self.directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=0)
        p_input, p_between, p_output = config.dropout_rates()
        self.input_dropout = nn.Dropout(p_input)
        self.rnn = make_rnn(
            config.cell, config.embedding_dim, hidden, layers,
            dropout=p_between, bidirectional=config.bidirectional,
        )
        pooled = hidden * self.directions * (3 if config.pooling == "concat" else 1)
        self.output_dropout = nn.Dropout(p_output)
        self.head = nn.Linear(pooled, num_classes)
        # Single-layer, single-direction twins of the stack for the dense path. Kept in a tuple
        # so they are not submodules: their own weights are never used (functional_call swaps
        # in the stack's), and they stay out of state_dict and parameters().
        self._twins = tuple(
            make_rnn(config.cell, config.embedding_dim if i == 0 else hidden * 2, hidden, 1)
            for i in range(layers if config.bidirectional else 0)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, 0.0, 0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        hidden = self.config.hidden_size
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                # Orthogonal recurrent blocks keep a plain tanh RNN's gradients from vanishing
                # or exploding at the start (Saxe et al., 2014); one block per gate.
                for block in param.data.split(hidden, dim=0):
                    nn.init.orthogonal_(block)
        nn.init.zeros_(self.head.bias)

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in PATHS:
            raise RnnlabError(f"path must be one of {', '.join(PATHS)}; got '{value}'")
        self._path = value

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or lengths.shape != tokens.shape[:1]:
            raise ValueError(f"expected tokens (B, T) and lengths (B,), got "
                             f"{tuple(tokens.shape)} and {tuple(lengths.shape)}")
        if lengths.device.type == "cpu" and lengths.numel() and int(lengths.min()) < 1:
            # Checked only on the CPU, where callers keep lengths: on a GPU it would sync.
            row = int((lengths < 1).nonzero()[0, 0])
            raise ValueError(f"row {row} has no tokens: pooling needs at least one per row")
        p = self.config.embedding_dropout if self.training else 0.0
        x = self.input_dropout(embedding_dropout(self.embedding, tokens, p))  # (B, T, E)
        packed = self.path == "packed" or (self.path == "auto" and tokens.is_cuda)
        on_device = lengths.to(tokens.device)
        out = self._packed(x, lengths) if packed else self._dense(x, on_device)  # (B, T, D)
        return self.head(self.output_dropout(self._pool(out, on_device)))  # (B, C)

    def _packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packing wants lengths on the CPU: pass them as given (callers keep them there).
        seq = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(seq)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out  # (B, T, D), zeros at pads

    def _dense(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.directions == 1:
            return self.rnn(x)[0]  # pads come last: they only touch positions that are masked
        reverse = _reverse_index(lengths, x.shape[1])  # (B, T)
        layers = self.config.num_layers
        for layer in range(layers):
            forward = self._run_direction(layer, "", x)  # (B, T, H)
            flipped = self._run_direction(layer, "_reverse", _gather_time(x, reverse))
            backward = _gather_time(flipped, reverse)  # (B, T, H), back in reading order
            x = torch.cat([forward, backward], dim=2)  # (B, T, 2H)
            if layer < layers - 1:
                x = nn.functional.dropout(x, self.rnn.dropout, self.training)
        return x

    def _run_direction(self, layer: int, suffix: str, x: torch.Tensor) -> torch.Tensor:
        twin = self._twins[layer]
        weights = {
            name: self.rnn.get_parameter(name.replace("_l0", f"_l{layer}") + suffix)
            for name, _ in twin.named_parameters()
        }
        return functional_call(twin, weights, (x,))[0]

    def _pool(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) outputs -> (B, D) or (B, 3D) features, padding masked out."""
        steps = torch.arange(out.shape[1], device=out.device)
        mask = (steps[None, :] < lengths[:, None]).unsqueeze(2)  # (B, T, 1)
        pooling = self.config.pooling
        features = []
        if pooling in ("last", "concat"):
            features.append(self._last(out, lengths))
        if pooling in ("mean", "concat"):
            total = out.masked_fill(~mask, 0.0).sum(dim=1)  # (B, D)
            features.append(total / lengths[:, None].to(out.dtype))
        if pooling in ("max", "concat"):
            features.append(out.masked_fill(~mask, float("-inf")).amax(dim=1))
        return torch.cat(features, dim=1) if len(features) > 1 else features[0]

    def _last(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The forward state at the last real token; a backward direction's state at step 0."""
        rows = torch.arange(out.shape[0], device=out.device)
        last = out[rows, lengths - 1]  # (B, D)
        if self.directions == 1:
            return last
        hidden = self.config.hidden_size
        return torch.cat([last[:, :hidden], out[:, 0, hidden:]], dim=1)  # (B, 2H)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, T) time indices reversing each row's first ``lengths[b]`` steps, pads left in place.

    The permutation is its own inverse, so the same index maps outputs back to reading order.
    """
    t = torch.arange(steps, device=lengths.device)[None, :]  # (1, T)
    n = lengths[:, None]  # (B, 1)
    return torch.where(t < n, n - 1 - t, t)


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, t]] for a (B, T, C) tensor and a (B, T) index."""
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))
