"""The one table that maps a cell name to its PyTorch recurrent layer, and state helpers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

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


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a window boundary but keep the values (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def select_state(state: State, index: torch.Tensor | slice) -> State:
    """The state of some rows of the batch (``index`` along the batch dimension)."""
    if isinstance(state, tuple):
        return tuple(s[:, index] for s in state)  # type: ignore[return-value]
    return state[:, index]
