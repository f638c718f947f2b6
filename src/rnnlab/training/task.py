"""The contract between the Trainer and a task (language modelling, classification).

The Trainer owns optimisation, budgets, evaluation cadence, checkpoints and logging; a task owns
its data, its model and how a batch becomes a loss. Keeping the two apart means resume, signal
handling and NaN guards are written once for every task.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rnnlab.data.vocab import Vocab


class Task(Protocol):
    model: nn.Module
    vocab: Vocab  # saved in the run directory; what token ids mean
    #: the class names, in output order, of a task that predicts labels; None for other tasks
    label_names: list[str] | None
    #: the metric that picks the best checkpoint, e.g. "loss" (lower is better) or "accuracy"
    best_metric: str
    higher_is_better: bool
    #: what one item of a batch is called in logs: "tokens" or "examples"
    unit: str

    def shard(self, rank: int, world: int) -> bool:
        """Prepare rank ``rank`` of ``world`` data-parallel processes (called only if world > 1).

        True: the task now yields this rank's share of every batch itself. False: the Trainer
        slices each batch along dimension 0 (see ``distributed.local_batch``).
        """

    def save_artifacts(self, run_dir: str | Path) -> None:
        """Write the files besides weights that loading the model needs (vocabulary, labels)."""

    def steps_per_epoch(self) -> int:
        """Number of optimisation steps in one pass over the training data."""

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The training batches of ``epoch`` from index ``start`` on.

        Must be a pure function of (seed, epoch): resuming at ``start`` yields exactly the
        batches that an uninterrupted run would have seen.
        """

    def train_loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean loss of one batch (with the graph attached) and the number of items in it."""

    def lr_factor(self, batch: Any) -> float:
        """The factor on the learning rate for this batch's step (e.g. a short window's)."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on a split (``loss`` always; e.g. ``ppl``, ``accuracy``)."""

    def state_dict(self) -> dict[str, Any]:
        """Task state that a resume must restore (e.g. a carried hidden state)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
