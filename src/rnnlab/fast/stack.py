"""A recurrent stack run layer by layer on a CPU, with a cheaper dropout mask between layers.

``nn.LSTM``'s dropout between layers draws one float Bernoulli sample per element, a visible
share of a CPU training step; running the layers one at a time through the same ATen op lets
the dropout between them use ``dropout`` below instead. Anywhere else (cuDNN runs the whole
stack in one call) the stack runs as usual.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnlab.models.cells import State

# nn.RNNBase.mode -> the ATen op its forward calls, here called one layer at a time
LAYER_OPS = {"LSTM": torch.lstm, "GRU": torch.gru, "RNN_TANH": torch.rnn_tanh,
             "RNN_RELU": torch.rnn_relu}


def run_stack(rnn: nn.Module, x: torch.Tensor, state: State | None,
              weights: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, State]:
    """``rnn(x, state)`` for a batch-first, one-direction stack: (B, T, I) -> (B, T, H).

    ``weights``: tensors to use in place of some of ``rnn``'s parameters, by name (weight
    drop). Training on a CPU with dropout between layers, the layers run one at a time and the
    dropout between them is ``dropout``; everywhere else (a ``LayerStack`` too) this is
    ``rnn(x, state)`` with ``weights`` in place.
    """
    weights = weights or {}
    if not (isinstance(rnn, nn.RNNBase) and rnn.training and rnn.dropout > 0
            and rnn.num_layers > 1 and x.device.type == "cpu" and x.dim() == 3
            and rnn.batch_first and not rnn.bidirectional and not getattr(rnn, "proj_size", 0)):
        return torch.func.functional_call(rnn, weights, (x, state)) if weights else rnn(x, state)
    lstm = rnn.mode == "LSTM"
    if state is None:
        zeros = x.new_zeros(rnn.num_layers, x.shape[0], rnn.hidden_size)
        state = (zeros, zeros) if lstm else zeros
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[: 4 if rnn.bias else 2]
    finals = []
    for layer in range(rnn.num_layers):
        if layer:
            x = dropout(x, rnn.dropout)
        tensors = [weights.get(f"{name}_l{layer}", getattr(rnn, f"{name}_l{layer}"))
                   for name in names]
        hx = tuple(s[layer : layer + 1] for s in state) if lstm else state[layer : layer + 1]
        # Arguments: one layer, no dropout inside, training, one direction, batch first.
        x, *final = LAYER_OPS[rnn.mode](x, hx, tensors, rnn.bias, 1, 0.0, True, False, True)
        finals.append(final)
    stacked = [torch.cat(parts) for parts in zip(*finals, strict=True)]
    return x, (tuple(stacked) if lstm else stacked[0])


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
