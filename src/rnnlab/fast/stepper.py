"""One token at a time: a language model's recurrent step, with its weights laid out for it.

A decoding step multiplies a few rows by each weight matrix. ``nn.LSTM`` and ``nn.Linear`` keep
their weights as (out, in) and multiply by the transpose, which the CPU BLAS serves at a fraction
of its speed for so few rows. ``TokenStepper`` keeps (in, out) copies, made once per generation,
and runs the cell equations itself; its logits match ``model(tokens, state)`` to float rounding
(tests/test_stepper.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rnnlab.models.cells import State

if TYPE_CHECKING:  # the model imports this package
    from rnnlab.models.language_model import RNNLanguageModel


class _Layer:
    """One layer's weights as (in, gates*H) and (H, gates*H) matrices, and its two biases."""

    def __init__(self, rnn: torch.nn.RNNBase, k: int):
        self.w_in = getattr(rnn, f"weight_ih_l{k}").detach().t().contiguous()
        self.w_hidden = getattr(rnn, f"weight_hh_l{k}").detach().t().contiguous()
        self.b_in = getattr(rnn, f"bias_ih_l{k}").detach()
        self.b_hidden = getattr(rnn, f"bias_hh_l{k}").detach()


class TokenStepper:
    """``step(ids, state) -> (logits, state)``: ``model(ids[:, None], state)`` for one token.

    The copies are a snapshot: build a new stepper after the model's weights change. The state
    has the model's own format, so a prompt read by ``model`` continues here.
    """

    def __init__(self, model: RNNLanguageModel):
        self.model = model
        self.cell = model.config.cell
        self.onehot = model.embedding is None
        self.layers = [_Layer(model.rnn, k) for k in range(model.rnn.num_layers)]
        self.projection = (None if model.projection is None
                           else model.projection.weight.detach().t().contiguous())
        decoder = model.decoder
        self.decoder = None if decoder is None else decoder.weight.detach().t().contiguous()
        self.decoder_bias = None if decoder is None else decoder.bias.detach()

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """(N,) ids and the state after the previous token -> (N, V) logits and the new state."""
        lstm = self.cell == "lstm"
        h_all, c_all = state if lstm else (state, None)
        x = None if self.onehot else self.model.embedding(ids)
        new_h, new_c = [], []
        for k, layer in enumerate(self.layers):
            if x is None:  # one-hot input: the product selects rows of the input matrix
                gates_in = layer.w_in[ids] + layer.b_in
            else:
                gates_in = torch.addmm(layer.b_in, x, layer.w_in)
            h = h_all[k]
            if lstm:
                h, c = self._lstm(gates_in, h, c_all[k], layer)
                new_c.append(c)
            elif self.cell == "gru":
                h = self._gru(gates_in, h, layer)
            else:
                pre = torch.addmm(gates_in, h, layer.w_hidden).add_(layer.b_hidden)
                h = pre.tanh_() if self.cell == "rnn_tanh" else pre.relu_()
            new_h.append(h)
            x = h
        out = x if self.projection is None else x @ self.projection
        if self.decoder is not None:
            logits = torch.addmm(self.decoder_bias, out, self.decoder)
        else:
            logits = self.model.adaptive.log_prob(out)
        h_stack = torch.stack(new_h)
        return logits, ((h_stack, torch.stack(new_c)) if lstm else h_stack)

    @staticmethod
    def _lstm(gates_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor, layer: _Layer
              ) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.addmm(gates_in, h, layer.w_hidden).add_(layer.b_hidden)
        size = h.shape[-1]
        sig = gates.sigmoid()  # i, f and o are used; the g block's sigmoid is simply ignored
        g = gates[:, 2 * size : 3 * size].tanh()
        c = sig[:, size : 2 * size] * c + sig[:, :size] * g
        return sig[:, 3 * size :] * c.tanh(), c

    @staticmethod
    def _gru(gates_in: torch.Tensor, h: torch.Tensor, layer: _Layer) -> torch.Tensor:
        gates_hidden = torch.addmm(layer.b_hidden, h, layer.w_hidden)
        size = h.shape[-1]
        rz = (gates_in[:, : 2 * size] + gates_hidden[:, : 2 * size]).sigmoid_()
        r, z = rz[:, :size], rz[:, size:]
        n = (gates_in[:, 2 * size :] + r * gates_hidden[:, 2 * size :]).tanh_()
        return n + z * (h - n)
