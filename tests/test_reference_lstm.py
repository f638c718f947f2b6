"""ReferenceLSTM against nn.LSTM: same weights must give the same outputs, states and gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from reference_lstm import (
    ReferenceLSTM,
    ReferenceLSTMCell,
    from_torch,
)

TOL = {"atol": 1e-5, "rtol": 0.0}
B, T, I, H = 3, 7, 5, 6


def _pair(
    num_layers: int, seed: int, dtype: torch.dtype = torch.float32, **kwargs: Any
) -> tuple[nn.LSTM, ReferenceLSTM]:
    torch.manual_seed(seed)
    kwargs.setdefault("batch_first", True)
    lstm = nn.LSTM(I, H, num_layers, dtype=dtype, **kwargs)
    return lstm, ReferenceLSTM.from_torch(lstm)


def _state(num_layers: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    return (torch.randn(num_layers, B, H, dtype=dtype), torch.randn(num_layers, B, H, dtype=dtype))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_forward_matches_torch(num_layers: int, with_state: bool, seed: int) -> None:
    lstm, ref = _pair(num_layers, seed)
    x = torch.randn(B, T, I)
    state = _state(num_layers) if with_state else None
    out, (h_n, c_n) = lstm(x, state)
    ref_out, (ref_h, ref_c) = ref(x, state)
    assert ref_out.shape == (B, T, H) and ref_h.shape == ref_c.shape == (num_layers, B, H)
    torch.testing.assert_close(ref_out, out, **TOL)
    torch.testing.assert_close(ref_h, h_n, **TOL)
    torch.testing.assert_close(ref_c, c_n, **TOL)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gradients_match_torch(num_layers: int, with_state: bool) -> None:
    # float64: the fused kernel and our step-by-step graph sum in different orders, and the
    # float32 rounding in summed weight gradients grows with B, T and H (about 1e-6 at these
    # sizes, measured over 20 seeds). In float64 a 1e-5 failure can only be a maths error;
    # the float32 test below keeps the single-precision path covered.
    dtype = torch.float64
    lstm, ref = _pair(num_layers, seed=3, dtype=dtype)
    x = torch.randn(B, T, I, dtype=dtype)
    state = _state(num_layers, dtype) if with_state else None
    # Random weights on every output so no gradient path cancels out of the loss.
    w_out, w_h, w_c = torch.randn(B, T, H, dtype=dtype), *_state(num_layers, dtype)

    def grads(module: nn.Module) -> dict[str, torch.Tensor]:
        inputs = x.clone().requires_grad_()
        init = tuple(s.clone().requires_grad_() for s in state) if state else None
        out, (h_n, c_n) = module(inputs, init)
        loss = (out * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()
        leaves = [inputs, *(init or ())]
        got = torch.autograd.grad(loss, leaves + list(module.parameters()))
        names = ["input", "h_0", "c_0"][: len(leaves)]
        if isinstance(module, ReferenceLSTM):  # report under nn.LSTM's names to compare
            names += list(module.torch_state_dict())  # same order as parameters()
        else:
            names += [n for n, _ in module.named_parameters()]
        return dict(zip(names, got, strict=True))

    expected, actual = grads(lstm), grads(ref)
    assert expected.keys() == actual.keys()
    assert len(expected) == 1 + 2 * with_state + 4 * num_layers
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_gradients_match_in_float32_too() -> None:
    # The same check in float32 (the dtype models train in), at the same 1e-5 tolerance.
    lstm, ref = _pair(2, seed=4)
    x = torch.randn(B, T, I)
    lstm(x)[0].sum().backward()
    ref(x)[0].sum().backward()
    for (name, p), q in zip(lstm.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **TOL, msg=name)


def _swap_f_g(param: torch.Tensor, hidden: int) -> None:
    """Exchange the forget- and candidate-gate row blocks in place."""
    f, g = slice(hidden, 2 * hidden), slice(2 * hidden, 3 * hidden)
    with torch.no_grad():
        rows_f = param[f].clone()
        param[f] = param[g]
        param[g] = rows_f


def test_wrong_gate_order_is_caught() -> None:
    # Proves the comparison has teeth: a cell reading the gates as (i, g, f, o) must fail it.
    lstm, ref = _pair(2, seed=5)
    for param in ref.parameters():
        _swap_f_g(param, H)
    x = torch.randn(B, T, I)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ref(x)[0], lstm(x)[0], **TOL)
    # Undoing the swap restores agreement, so the mismatch came from the gate order alone.
    for param in ref.parameters():
        _swap_f_g(param, H)
    torch.testing.assert_close(ref(x)[0], lstm(x)[0], **TOL)


def test_cell_matches_lstm_cell() -> None:
    torch.manual_seed(6)
    torch_cell = nn.LSTMCell(I, H)
    cell = ReferenceLSTMCell(I, H)
    cell.load_state_dict(torch_cell.state_dict())  # same parameter names as nn.LSTMCell
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    h_ref, c_ref = torch_cell(x, (h, c))
    h_t, c_t = cell(x, (h, c))
    torch.testing.assert_close(h_t, h_ref, **TOL)
    torch.testing.assert_close(c_t, c_ref, **TOL)


def test_load_state_dict_takes_torch_keys_and_round_trips() -> None:
    lstm, _ = _pair(2, seed=7)
    ref = ReferenceLSTM(I, H, 2)
    ref.load_state_dict(lstm.state_dict())  # weight_ih_l0, ... translated on load
    x = torch.randn(B, T, I)
    torch.testing.assert_close(ref(x)[0], lstm(x)[0], **TOL)
    # Our own keys still load, and to_torch goes back the other way.
    again = ReferenceLSTM(I, H, 2)
    again.load_state_dict(ref.state_dict())
    torch.testing.assert_close(again(x)[0], lstm(x)[0], **TOL)
    torch.testing.assert_close(ref.to_torch()(x)[0], lstm(x)[0], **TOL)


def test_time_major_and_no_bias_match() -> None:
    lstm, ref = _pair(2, seed=8, batch_first=False, bias=False)
    assert not ref.batch_first and ref.cells[0].bias_ih is None
    x = torch.randn(T, B, I)
    out, (h_n, c_n) = lstm(x)
    ref_out, (ref_h, ref_c) = ref(x)
    torch.testing.assert_close(ref_out, out, **TOL)
    torch.testing.assert_close(ref_h, h_n, **TOL)
    torch.testing.assert_close(ref_c, c_n, **TOL)


def test_dropout_between_layers_only_in_training() -> None:
    lstm, ref = _pair(2, seed=9, dropout=0.5)
    assert ref.dropout == 0.5
    x = torch.randn(B, T, I)
    ref.eval()
    torch.testing.assert_close(ref(x)[0], lstm.eval()(x)[0], **TOL)
    ref.train()
    assert not torch.allclose(ref(x)[0], lstm(x)[0], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [{"bidirectional": True}, {"proj_size": 2}], ids=["bidirectional", "proj_size"]
)
def test_from_torch_rejects_unsupported(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        from_torch(nn.LSTM(I, H, batch_first=True, **kwargs))


def test_rejects_bad_shapes() -> None:
    ref = ReferenceLSTM(I, H, 2)
    with pytest.raises(ValueError, match="3-d"):
        ref(torch.randn(T, I))
    with pytest.raises(ValueError, match="initial state"):
        ref(torch.randn(B, T, I), _state(1))
