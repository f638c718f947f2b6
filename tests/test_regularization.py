"""Dropout: the cheap mask's statistics, the layer-by-layer stack, and each model's rates."""

from __future__ import annotations

import copy

import pytest
import torch

from rnnlab.config import CELLS, ModelConfig
from rnnlab.fast import stack
from rnnlab.fast.stack import dropout, run_stack
from rnnlab.models.cells import make_rnn
from rnnlab.models.classifier import RNNClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

N = 200_000  # elements per mask: the drop rate's standard error is below 0.0012


@pytest.mark.parametrize("p", [0.2, 0.5, 0.65])
def test_dropout_drops_at_the_rate_and_scales_the_rest(p: float) -> None:
    torch.manual_seed(0)
    out = dropout(torch.ones(N // 100, 100), p)
    dropped = out == 0
    # One 32-bit draw feeds two neighbours: each half must drop at the rate on its own.
    for half in (dropped.flatten()[0::2], dropped.flatten()[1::2]):
        assert half.float().mean().item() == pytest.approx(p, abs=0.006)
    kept = out[~dropped]
    assert torch.all(kept == kept[0])
    assert kept[0].item() == pytest.approx(1 / (1 - p), rel=1e-4)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)  # the expectation is kept


def test_dropout_neighbours_are_independent() -> None:
    torch.manual_seed(0)
    pairs = (dropout(torch.ones(N), 0.5) == 0).view(-1, 2)
    both = (pairs[:, 0] & pairs[:, 1]).float().mean().item()
    assert both == pytest.approx(0.25, abs=0.006)


def test_dropout_follows_the_seed_and_passes_through_at_zero() -> None:
    x = torch.randn(4, 7, 5)
    torch.manual_seed(3)
    a = dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.3))
    assert not torch.equal(a, dropout(x, 0.3))
    assert dropout(x, 0.0) is x


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_state", [False, True])
def test_layer_by_layer_stack_equals_the_stack(cell: str, with_state: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With the dropout between layers made the identity, the output, state and gradients are
    those of the PyTorch stack without dropout."""
    torch.manual_seed(0)
    rnn = make_rnn(cell, 6, 8, 3, dropout=0.4).train()
    plain = copy.deepcopy(rnn)
    plain.dropout = 0.0
    x = torch.randn(2, 5, 6)
    state = None
    if with_state:
        h = torch.randn(3, 2, 8)
        state = (h, torch.randn(3, 2, 8)) if cell == "lstm" else h
    monkeypatch.setattr(stack, "dropout", lambda t, p: t)
    out, new_state = run_stack(rnn, x, state)
    ref, ref_state = plain(x, state)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    parts = new_state if isinstance(new_state, tuple) else (new_state,)
    ref_parts = ref_state if isinstance(ref_state, tuple) else (ref_state,)
    for got, want in zip(parts, ref_parts, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    (out.square().sum() + parts[0].sum()).backward()
    (ref.square().sum() + ref_parts[0].sum()).backward()
    for (name, got), want in zip(rnn.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_by_layer_stack_with_pytorchs_mask_reproduces_the_stack_in_training(
        cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawing PyTorch's own dropout mask in the order nn's stack draws it (time-major, one
    Bernoulli per element), the layer-by-layer stack gives nn's training output to the bit: only
    the mask's generator differs."""
    def pytorch_dropout(t: torch.Tensor, p: float) -> torch.Tensor:
        noise = torch.empty(t.shape[1], t.shape[0], t.shape[2]).bernoulli_(1 - p).div_(1 - p)
        return t * noise.transpose(0, 1)

    torch.manual_seed(0)
    rnn = make_rnn(cell, 6, 8, 3, dropout=0.5).train()
    x = torch.randn(2, 5, 6)
    torch.manual_seed(5)
    ref, _ = rnn(x)
    monkeypatch.setattr(stack, "dropout", pytorch_dropout)
    torch.manual_seed(5)
    out, _ = run_stack(rnn, x, None)
    assert torch.equal(out, ref)


def test_layer_by_layer_stack_drops_in_training_only() -> None:
    torch.manual_seed(0)
    rnn = make_rnn("lstm", 6, 8, 2, dropout=0.5)
    x = torch.randn(2, 5, 6)
    rnn.eval()
    with torch.no_grad():
        assert torch.equal(run_stack(rnn, x, None)[0], rnn(x)[0])
        rnn.train()
        torch.manual_seed(1)
        a = run_stack(rnn, x, None)[0]
        torch.manual_seed(1)
        assert torch.equal(a, run_stack(rnn, x, None)[0])  # the seed decides the masks
        rnn.dropout = 0.0
        assert not torch.equal(a, rnn(x)[0])  # and there were masks


@pytest.mark.parametrize(("input_dropout", "output_dropout", "expected"),
                         [(0.1, 0.3, (0.1, 0.2, 0.3)), (None, None, (0.2, 0.2, 0.2))])
def test_classifier_takes_its_three_dropout_rates_from_the_config(
    input_dropout: float | None, output_dropout: float | None, expected: tuple[float, ...]
) -> None:
    config = ModelConfig(embedding_dim=8, hidden_size=8, num_layers=2, dropout=0.2,
                         input_dropout=input_dropout, output_dropout=output_dropout,
                         tie_weights=False)
    model = RNNClassifier(config, vocab_size=20, num_classes=2)
    assert (model.input_dropout.p, model.rnn.dropout, model.output_dropout.p) == expected
