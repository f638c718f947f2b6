"""Optimisers and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rnnlab import fast
from rnnlab.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig,
                   device: torch.device) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the model's parameters (tied weights appear once); NT-ASGD and
    ASGD step as SGD, their averaging is ``training.averaging``'s.

    On CPU and CUDA the fused Adam kernels are used: on this kind of model the default
    per-parameter loop costs as much time per step as a whole 2-layer LSTM forward pass.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer in ("sgd", "nt-asgd", "asgd"):
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    # Fused CPU kernels arrived in torch 2.4; CUDA has had them longer.
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    fused = device.type == "cuda" or (device.type == "cpu" and (major, minor) >= (2, 4))
    return cls(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


class Schedule:
    """The learning rate over a run.

    - ``constant``: ``lr`` (after an optional linear warm-up).
    - ``plateau``: multiply by ``lr_decay`` after ``patience`` + 1 evaluations without a better
      validation loss (Zaremba et al.'s divide-by-4 is ``lr_decay = 0.25, patience = 0``).
    - ``cosine``: from ``lr`` down to ``min_lr`` over the whole budget (epochs, steps or minutes,
      whichever ends first), so a time-budgeted run anneals fully before its deadline.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.scale = 1.0  # plateau decays accumulate here
        self.bad_evals = 0

    def lr(self, step: int, progress: float) -> float:
        config = self.config
        if config.schedule == "cosine":
            base = config.min_lr + (config.lr - config.min_lr) * 0.5 * (
                1 + math.cos(math.pi * min(progress, 1.0)))
        else:
            base = max(config.lr * self.scale, config.min_lr)
        if config.warmup_steps and step < config.warmup_steps:
            base *= (step + 1) / config.warmup_steps
        return base

    def after_eval(self, improved: bool) -> bool:
        """Record an evaluation; True when the plateau rule just decayed the rate."""
        if self.config.schedule != "plateau":
            return False
        self.bad_evals = 0 if improved else self.bad_evals + 1
        if self.bad_evals > self.config.patience:
            self.scale *= self.config.lr_decay
            self.bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"scale": self.scale, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.bad_evals = int(state["bad_evals"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``grads`` together, as ``clip_grad_norm_`` computes it."""
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clipped_step(optimizer: torch.optim.Optimizer, grads: list[torch.Tensor], norm: float,
                 max_norm: float, step: Callable[[], Any]) -> None:
    """Scale ``grads`` of total ``norm`` to at most ``max_norm`` (0: no limit), then call ``step``.

    The scale is ``clip_grad_norm_``'s: ``min(1, max_norm / (norm + 1e-6))``.
    """
    scale = min(1.0, max_norm / (norm + 1e-6)) if max_norm else 1.0
    if fast.enabled():  # fast path: the same update with fewer passes (rnnlab.fast.optim)
        fast.clipped_step(optimizer, grads, scale, step)
        return
    for grad in grads:
        grad.mul_(scale)
    step()
