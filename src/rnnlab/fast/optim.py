"""Gradient clipping taken in the optimiser's step where that spares a pass over the gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def clipped_step(optimizer: torch.optim.Optimizer, grads: list[torch.Tensor], scale: float,
                 step: Callable[[], Any]) -> None:
    """``step`` on ``grads`` multiplied by ``scale`` (at most 1), reading them no more than needed.

    Plain SGD (no momentum, no weight decay) moves every weight by ``-lr * grad``, so there the
    clipped step is taken as a step with the learning rate scaled instead: the same update
    without a pass that reads and writes every gradient. Steps under the limit (``scale`` 1)
    skip that pass with any optimiser, where ``clip_grad_norm_`` multiplies by 1.
    """
    if scale >= 1.0:
        step()
        return
    if not _plain_sgd(optimizer):
        torch._foreach_mul_(grads, scale)
        step()
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] *= scale
    try:
        step()
    finally:
        for group, lr in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = lr


def _plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer) is torch.optim.SGD and all(
        not group["momentum"] and not group["weight_decay"] for group in optimizer.param_groups)
