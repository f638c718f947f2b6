"""Language modelling as a Task: truncated BPTT over contiguous streams, perplexity on splits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab import distributed
from rnnlab.config import RunConfig
from rnnlab.data.batching import batchify, window_lengths, windows
from rnnlab.data.vocab import Vocab
from rnnlab.lm.data import LMData, load_lm_data
from rnnlab.lm.evaluation import evaluate_stream, lm_metrics
from rnnlab.models.cells import State, detach_state
from rnnlab.models.language_model import RNNLanguageModel


class LanguageModelTask:
    """Train a :class:`RNNLanguageModel` on ``data.splits['train']`` with the state carried.

    The hidden state flows from one window to the next and is detached at each boundary, so
    gradients reach back ``bptt`` steps while the state itself sees the whole stream.
    """

    best_metric = "loss"
    higher_is_better = False
    unit = "tokens"
    label_names = None  # a language model predicts tokens, not labels

    def __init__(self, model: RNNLanguageModel, data: LMData, config: RunConfig,
                 device: torch.device):
        self.model = model
        self.data = data
        self.config = config
        self.device = device
        self.streams = batchify(data.splits["train"], config.data.batch_size)
        if self.streams.dtype == torch.long:  # a compact (mapped) corpus stays on disk
            self.streams = self.streams.to(device)
        self.state: State | None = None
        self.rows = slice(None)  # this rank's streams of the global batch (all of them alone)

    @property
    def vocab(self) -> Vocab:
        return self.data.vocab

    def shard(self, rank: int, world: int) -> bool:
        """Train on rows ``[r*B/W, (r+1)*B/W)`` of the global batch of ``B`` streams only.

        Every rank batchifies the whole text identically, so the shares are disjoint and together
        are exactly the one-process batch; the hidden state carried per row stays with its rank.
        Returns True: the batches are this rank's share already.
        """
        self.rows = distributed.equal_rows(self.config.data.batch_size, rank, world,
                                           "data.batch_size")
        self.streams = self.streams[self.rows]
        if self.streams.dtype == torch.long:
            self.streams = self.streams.clone()  # free the other ranks' rows
        return True

    def save_artifacts(self, run_dir: str | Path) -> None:
        """The vocabulary: what the saved weights' token ids mean."""
        ckpt.save_artifacts(run_dir, self.vocab)

    def _lengths(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.train.seed * 1000 + epoch)
        return window_lengths(
            self.streams.shape[1] - 1, self.config.data.bptt,
            variable=self.config.data.variable_bptt, generator=generator,
        )

    def steps_per_epoch(self) -> int:
        return len(self._lengths(0))

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if start == 0:
            self.state = None  # each epoch starts the streams from their beginning
        yield from windows(self.streams, self._lengths(epoch), start, self.device)

    def train_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        inputs, targets = batch
        train = self.config.train
        loss, state = self.model.regularized_nll(inputs, targets, detach_state(self.state),
                                                 train.ar_alpha, train.tar_beta)
        self.state = detach_state(state)
        return loss, targets.numel()

    def lr_factor(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Window length / bptt with ``train.scale_lr_by_window`` (Merity et al., 2017), else 1."""
        if not self.config.train.scale_lr_by_window:
            return 1.0
        return batch[0].shape[1] / self.config.data.bptt

    def evaluate(self, split: str) -> dict[str, float]:
        total, count = evaluate_stream(
            self.model, self.data.splits[split], self.config.data.eval_batch_size,
            self.config.data.bptt, self.device,
        )
        return lm_metrics(total, count)

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        # The state of the whole global batch (a collective: every rank calls this), so that a
        # checkpoint does not depend on how many processes wrote it.
        def gathered(state: State) -> list[torch.Tensor]:
            parts = state if isinstance(state, tuple) else (state,)
            return [distributed.gather_rows(s, dim=1).cpu() for s in parts]

        if isinstance(self.state, list):  # layers of their own sizes: one state per layer
            return {"layers": [gathered(layer) for layer in self.state]}
        return {"hidden": gathered(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def moved(parts: list[torch.Tensor]) -> State:
            rows = tuple(s[:, self.rows].to(self.device) for s in parts)  # (layers, B, H) saved
            return rows if len(rows) == 2 else rows[0]

        if state.get("layers"):
            self.state = [moved(layer) for layer in state["layers"]]
        else:
            self.state = moved(state["hidden"]) if state.get("hidden") else None


def build_lm_task(config: RunConfig, device: torch.device) -> LanguageModelTask:
    """Read the configured text and make a fresh model for it, on ``device``."""
    data = load_lm_data(config.data)
    model = RNNLanguageModel(config.model, len(data.vocab)).to(device)
    return LanguageModelTask(model, data, config, device)
