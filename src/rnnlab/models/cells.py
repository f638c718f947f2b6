"""The one table that maps a cell name to its PyTorch recurrent layer, and state helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rnnlab.models.regularization import LockedDropout

# A stack of one size: h (layers, B, H), or (h, c) for an LSTM. A LayerStack: a list with one
# such state per layer, each (1, B, H_k).
LayerState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
State = LayerState | list[LayerState]

# name -> (module class, extra constructor arguments)
CELLS: dict[str, tuple[type[nn.RNNBase], dict[str, Any]]] = {
    "lstm": (nn.LSTM, {}),
    "gru": (nn.GRU, {}),
    "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
}


def make_rnn(
    cell: str, input_size: int, hidden_size: int, num_layers: int, *,
    dropout: float = 0.0, bidirectional: bool = False,
) -> nn.RNNBase:
    """A batch-first recurrent stack; ``dropout`` acts between layers."""
    module, extra = CELLS[cell]
    rnn = module(
        input_size, hidden_size, num_layers, batch_first=True,
        dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional, **extra,
    )
    if cell == "lstm":
        # A forget-gate bias of 1 keeps memory flowing early in training (Jozefowicz et al., 2015).
        for name, param in rnn.named_parameters():
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    param[hidden_size : 2 * hidden_size].fill_(1.0)
                    rnn.get_parameter(name.replace("ih", "hh"))[hidden_size : 2 * hidden_size] = 0
    return rnn


class LayerStack(nn.Module):
    """Single-layer recurrent modules of their own sizes, run one after another.

    What one ``nn.LSTM`` cannot hold: layers of different sizes, such as the 1150, 1150, 400 of
    Merity et al. (2017). Their dropout between layers is locked over time, as there.
    ``forward(x[B, T, I], state) -> (out[B, T, H_last], state)``; the state is a list of one
    ``nn.LSTM``-style state per layer.
    """

    def __init__(self, cell: str, input_size: int, hidden_sizes: list[int], dropout: float):
        super().__init__()
        inputs = [input_size, *hidden_sizes[:-1]]
        self.layers = nn.ModuleList(
            make_rnn(cell, i, h, 1) for i, h in zip(inputs, hidden_sizes, strict=True))
        self.between = LockedDropout(dropout)

    def forward(self, x: torch.Tensor, state: list[LayerState] | None = None
                ) -> tuple[torch.Tensor, list[LayerState]]:
        finals = []
        for k, layer in enumerate(self.layers):
            if k:
                x = self.between(x)
            x, final = layer(x, None if state is None else state[k])
            finals.append(final)
        return x, finals


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """``state`` with ``fn`` applied to every tensor in it, its structure kept."""
    if isinstance(state, list):
        return [map_state(fn, layer) for layer in state]
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)  # type: ignore[return-value]
    return fn(state)


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a window boundary but keep the values (truncated BPTT)."""
    return None if state is None else map_state(torch.Tensor.detach, state)


def select_state(state: State, index: torch.Tensor | slice) -> State:
    """The state of some rows of the batch (``index`` along the batch dimension)."""
    return map_state(lambda s: s[:, index], state)
