"""Gradient clipping folded into the optimiser's step gives the update PyTorch's clipping gives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnlab import fast
from rnnlab.training.optim import clipped_step, grad_norm


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _backward(model: nn.Module, seed: int) -> None:
    model.zero_grad()
    inputs = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed))
    model(inputs).pow(2).sum().mul(10).backward()  # a norm well above the limits


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.5),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
    "sgd-decay": lambda p: torch.optim.SGD(p, lr=0.5, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("max_norm", [0.25, 0.0, 1e6])  # clipped, no limit, under the limit
@pytest.mark.parametrize("fast_on", [True, False])
def test_same_updates_as_clip_grad_norm_then_step(name, max_norm, fast_on):
    with fast.enabled_as(fast_on):
        _compare_with_clip_grad_norm(name, max_norm)


def _compare_with_clip_grad_norm(name: str, max_norm: float) -> None:
    ours, theirs = _model(), _model()
    opt_ours = OPTIMIZERS[name](ours.parameters())
    opt_theirs = OPTIMIZERS[name](theirs.parameters())
    for seed in (1, 2):  # two steps: momentum and Adam's moments carry the first into the second
        _backward(theirs, seed)
        want_norm = nn.utils.clip_grad_norm_(theirs.parameters(), max_norm or float("inf"))
        opt_theirs.step()
        _backward(ours, seed)
        grads = [p.grad for p in ours.parameters()]
        norm = float(grad_norm(grads))
        assert norm == pytest.approx(float(want_norm), rel=1e-6)
        clipped_step(opt_ours, grads, norm, max_norm, opt_ours.step)
        for got, want in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert [g["lr"] for g in opt_ours.param_groups] == [g["lr"] for g in opt_theirs.param_groups]


def test_plain_sgd_takes_the_clip_in_its_step_and_leaves_the_gradients_alone():
    model = _model()
    _backward(model, 1)
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    norm = float(grad_norm([p.grad for p in model.parameters()]))
    assert norm > 1
    seen = []
    fast.clipped_step(optimizer, [p.grad for p in model.parameters()], 1.0 / norm,
                      lambda: seen.append(optimizer.param_groups[0]["lr"]) or optimizer.step())
    assert seen == [pytest.approx(0.5 / norm)]  # the step ran at the scaled rate ...
    assert optimizer.param_groups[0]["lr"] == 0.5  # ... which is restored afterwards
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)


def test_grad_norm_of_nothing_is_zero():
    assert float(grad_norm([])) == 0.0
