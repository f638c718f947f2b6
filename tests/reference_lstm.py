"""An LSTM written out from its gate equations, numerically interchangeable with ``nn.LSTM``.

``nn.LSTM`` runs a fused kernel we cannot step into; this module spells out every gate so that
it can be read, checked against PyTorch (weights load both ways), and later changed into custom
cells. It is a reference, not a fast path: one Python step per time step and layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

LSTMState = tuple[torch.Tensor, torch.Tensor]

# PyTorch stacks the four gates' rows in this order in weight_ih, weight_hh and both biases.
GATES = ("i", "f", "g", "o")


class ReferenceLSTMCell(nn.Module):
    """One LSTM step, gate by gate, with ``nn.LSTMCell``'s parameters and layout.

    With ``W_* = weight_ih`` rows and ``U_* = weight_hh`` rows of each gate (order i, f, g, o)::

        i_t = sigmoid(W_i x_t + b_ii + U_i h + b_hi)    input gate
        f_t = sigmoid(W_f x_t + b_if + U_f h + b_hf)    forget gate
        g_t = tanh(W_g x_t + b_ig + U_g h + b_hg)       candidate cell
        o_t = sigmoid(W_o x_t + b_io + U_o h + b_ho)    output gate
        c_t = f_t * c + i_t * g_t
        h_t = o_t * tanh(c_t)

    ``forward(x_t[B, I], (h[B, H], c[B, H])) -> (h_t[B, H], c_t[B, H])``.
    """

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, *,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's LSTM initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def _gate(self, k: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The pre-activation of gate ``k`` (index into GATES): W_k x + b_ik + U_k h + b_hk."""
        rows = slice(k * self.hidden_size, (k + 1) * self.hidden_size)
        b_ih = None if self.bias_ih is None else self.bias_ih[rows]
        b_hh = None if self.bias_hh is None else self.bias_hh[rows]
        return F.linear(x, self.weight_ih[rows], b_ih) + F.linear(h, self.weight_hh[rows], b_hh)

    def forward(self, x_t: torch.Tensor, state: LSTMState) -> LSTMState:
        h, c = state
        i = torch.sigmoid(self._gate(0, x_t, h))
        f = torch.sigmoid(self._gate(1, x_t, h))
        g = torch.tanh(self._gate(2, x_t, h))
        o = torch.sigmoid(self._gate(3, x_t, h))
        c_t = f * c + i * g
        h_t = o * torch.tanh(c_t)
        return h_t, c_t

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"


class ReferenceLSTM(nn.Module):
    """A unidirectional multi-layer LSTM of :class:`ReferenceLSTMCell`, used like ``nn.LSTM``.

    ``forward(x[B, T, I], (h_0, c_0) | None) -> (output[B, T, H], (h_n, c_n))`` with states of
    shape (num_layers, B, H); ``batch_first=False`` takes and returns (T, B, ...) instead. Only
    batched input is accepted. ``dropout`` acts on every layer's output except the last, in
    training mode only, as in ``nn.LSTM``. ``load_state_dict`` also accepts ``nn.LSTM``'s keys
    (``weight_ih_l0``, ...); :meth:`from_torch` and :meth:`to_torch` convert whole modules.
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
        batch_first: bool = True, dropout: float = 0.0,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = dropout
        self.cells = nn.ModuleList(
            ReferenceLSTMCell(
                input_size if layer == 0 else hidden_size, hidden_size, bias,
                device=device, dtype=dtype,
            )
            for layer in range(num_layers)
        )
        self.register_load_state_dict_pre_hook(_rename_torch_keys)

    @classmethod
    def from_torch(cls, lstm: nn.LSTM) -> ReferenceLSTM:
        """A ReferenceLSTM with a copy of ``lstm``'s configuration and weights.

        Raises ValueError for what this reference does not implement: bidirectional LSTMs and
        projections (``proj_size > 0``). ``batch_first`` either way is supported and copied.
        """
        if not isinstance(lstm, nn.LSTM):
            raise ValueError(f"from_torch needs an nn.LSTM, got {type(lstm).__name__}")
        if lstm.bidirectional:
            raise ValueError("ReferenceLSTM is unidirectional; bidirectional nn.LSTM unsupported")
        if lstm.proj_size > 0:
            raise ValueError("ReferenceLSTM has no projection; proj_size > 0 unsupported")
        weight = lstm.weight_ih_l0
        ref = cls(
            lstm.input_size, lstm.hidden_size, lstm.num_layers, bias=lstm.bias,
            batch_first=lstm.batch_first, dropout=float(lstm.dropout),
            device=weight.device, dtype=weight.dtype,
        )
        ref.load_state_dict(lstm.state_dict())  # nn.LSTM keys, translated by the pre-hook
        return ref

    def to_torch(self) -> nn.LSTM:
        """An ``nn.LSTM`` with this module's configuration and a copy of its weights."""
        weight = self.cells[0].weight_ih
        lstm = nn.LSTM(
            self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
            batch_first=self.batch_first, dropout=self.dropout,
            device=weight.device, dtype=weight.dtype,
        )
        lstm.load_state_dict(self.torch_state_dict())
        return lstm

    def torch_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under ``nn.LSTM``'s key names (detached, not copied)."""
        return {
            f"{name}_l{layer}": param.detach()
            for layer, cell in enumerate(self.cells)
            for name, param in cell.named_parameters()
        }

    def forward(
        self, x: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        if x.dim() != 3:
            raise ValueError(f"ReferenceLSTM expects batched 3-d input, got shape {tuple(x.shape)}")
        if not self.batch_first:
            x = x.transpose(0, 1)  # work in (B, T, I) throughout
        batch, steps, _ = x.shape
        if steps == 0:
            raise ValueError("expected sequence length to be larger than 0")  # as nn.LSTM
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros)
        h_0, c_0 = state
        expected = (self.num_layers, batch, self.hidden_size)
        if tuple(h_0.shape) != expected or tuple(c_0.shape) != expected:
            raise ValueError(
                f"initial state must be two tensors of shape {expected}, "
                f"got {tuple(h_0.shape)} and {tuple(c_0.shape)}"
            )
        h_n, c_n = [], []
        layer_input = x
        for layer, cell in enumerate(self.cells):
            h, c = h_0[layer], c_0[layer]
            outputs = []
            for t in range(steps):
                h, c = cell(layer_input[:, t], (h, c))
                outputs.append(h)
            h_n.append(h)
            c_n.append(c)
            layer_input = torch.stack(outputs, dim=1)  # (B, T, H)
            if layer < self.num_layers - 1 and self.dropout > 0:
                # Between layers only: the last layer's output is returned untouched, as in PyTorch.
                layer_input = F.dropout(layer_input, self.dropout, self.training)
        output = layer_input if self.batch_first else layer_input.transpose(0, 1)
        return output, (torch.stack(h_n), torch.stack(c_n))

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bias={self.bias}, batch_first={self.batch_first}, dropout={self.dropout}"
        )


def from_torch(lstm: nn.LSTM) -> ReferenceLSTM:
    """Shorthand for :meth:`ReferenceLSTM.from_torch`."""
    return ReferenceLSTM.from_torch(lstm)


def _rename_torch_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """Load-time pre-hook: map ``nn.LSTM`` keys (``weight_ih_l0``) to ours (``cells.0.weight_ih``).

    Our own keys pass through, so the module's ordinary ``state_dict`` still round-trips; keys
    nn.LSTM has and we lack (``*_reverse``, ``weight_hr_l*``) are left alone and reported as
    unexpected by a strict load.
    """
    for layer in range(len(module.cells)):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            torch_key = f"{prefix}{name}_l{layer}"
            if torch_key in state_dict:
                state_dict[f"{prefix}cells.{layer}.{name}"] = state_dict.pop(torch_key)
