"""Averaged SGD with a non-monotone trigger: NT-ASGD (Merity et al., 2017).

SGD's iterates wander around a minimum; their running mean (Polyak & Juditsky, 1992) sits
closer to it. NT-ASGD starts averaging once an evaluation's validation loss is worse than the
best of all evaluations but the last ``nonmono`` ones, so nobody has to guess when. From then
on evaluation and the best checkpoint use the average; training goes on from the iterates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from rnnlab.config import TrainConfig


class WeightAverage:
    """The mean of the model's weights after each optimiser step since averaging started.

    ``train.optimizer``: "nt-asgd" starts on the non-monotone trigger (``after_eval``), "asgd"
    at the first step (fine-tuning), any other optimiser never.
    """

    def __init__(self, model: nn.Module, config: TrainConfig):
        self.params = [p for p in model.parameters() if p.requires_grad]  # tied weights once
        self.trigger = config.optimizer == "nt-asgd"
        self.nonmono = config.nonmono
        self.started = config.optimizer == "asgd"
        self.count = 0  # iterates in the average
        self.average = [torch.zeros_like(p) for p in self.params] if self.started else []
        self.losses: list[float] = []  # validation losses seen before the trigger

    def update(self) -> None:
        """Add the weights after an optimiser step: ``average += (w - average) / count``."""
        if not self.started:
            return
        self.count += 1
        with torch.no_grad():
            for mean, param in zip(self.average, self.params, strict=True):
                if self.count == 1:
                    mean.copy_(param)
                else:
                    mean.lerp_(param, 1.0 / self.count)

    def after_eval(self, loss: float) -> bool:
        """Record a validation loss (lower is better); True when averaging starts now."""
        if not self.trigger or self.started:
            return False
        fire = len(self.losses) > self.nonmono and loss > min(self.losses[: -self.nonmono])
        self.losses.append(loss)
        if fire:
            self.started = True
            self.average = [torch.zeros_like(p) for p in self.params]
        return fire

    @contextlib.contextmanager
    def in_model(self) -> Iterator[None]:
        """While entered, the model holds the averaged weights (if any), then its own again."""
        if not self.count:
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        with torch.no_grad():
            for mean, param in zip(self.average, self.params, strict=True):
                held = param.detach().clone()
                param.copy_(mean)
                mean.copy_(held)

    def state_dict(self) -> dict[str, Any]:
        return {"started": self.started, "count": self.count, "losses": list(self.losses),
                "average": [a.detach().cpu() for a in self.average]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.started = bool(state["started"])
        self.count = int(state["count"])
        self.losses = [float(x) for x in state["losses"]]
        self.average = [torch.zeros_like(p) for p in self.params] if self.started else []
        if len(state["average"]) != len(self.average):
            raise ValueError("the saved weight average does not match the model")
        with torch.no_grad():
            for mean, saved in zip(self.average, state["average"], strict=True):
                mean.copy_(saved)
