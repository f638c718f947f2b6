"""Language modelling as a Task: truncated BPTT over contiguous streams, perplexity on splits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from rnnlab import distributed
from rnnlab.config import RunConfig
from rnnlab.data.batching import batchify, window_lengths, windows
from rnnlab.data.lm_data import LMData
from rnnlab.data.vocab import Vocab
from rnnlab.models.cells import State, detach_state, select_state
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.training.metrics import lm_metrics


class LanguageModelTask:
    """Train a :class:`RNNLanguageModel` on ``data.splits['train']`` with the state carried.

    The hidden state flows from one window to the next and is detached at each boundary, so
    gradients reach back ``bptt`` steps while the state itself sees the whole stream.
    """

    best_metric = "loss"
    higher_is_better = False
    unit = "tokens"

    def __init__(self, model: RNNLanguageModel, data: LMData, config: RunConfig,
                 device: torch.device):
        self.model = model
        self.data = data
        self.config = config
        self.device = device
        self.streams = batchify(data.splits["train"], config.data.batch_size).to(device)
        self.state: State | None = None
        self.rows = slice(None)  # this rank's streams of the global batch (all of them alone)

    @property
    def vocab(self) -> Vocab:
        return self.data.vocab

    def shard(self, rank: int, world: int) -> None:
        """Train on rows ``[r*B/W, (r+1)*B/W)`` of the global batch of ``B`` streams only.

        Every rank batchifies the whole text identically, so the shares are disjoint and together
        are exactly the one-process batch; the hidden state carried per row stays with its rank.
        """
        self.rows = distributed.equal_rows(self.config.data.batch_size, rank, world,
                                           "data.batch_size")
        self.streams = self.streams[self.rows].clone()  # clone: free the other ranks' rows

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
        yield from windows(self.streams, self._lengths(epoch), start)

    def train_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        inputs, targets = batch
        loss, state = self.model.nll(inputs, targets, detach_state(self.state))
        self.state = detach_state(state)
        return loss, targets.numel()

    def evaluate(self, split: str) -> dict[str, float]:
        total, count = evaluate_stream(
            self.model, self.data.splits[split], self.config.data.eval_batch_size,
            self.config.data.bptt, self.device,
        )
        return lm_metrics(total, count)

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        state = self.state if isinstance(self.state, tuple) else (self.state,)
        # The state of the whole global batch (a collective: every rank calls this), so that a
        # checkpoint does not depend on how many processes wrote it.
        return {"hidden": [distributed.gather_rows(s, dim=1).cpu() for s in state]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        hidden = state.get("hidden")
        if not hidden:
            self.state = None
            return
        moved = tuple(s[:, self.rows].to(self.device) for s in hidden)  # (layers, B, H) saved
        self.state = moved if len(moved) == 2 else moved[0]


# The largest logits buffer evaluation keeps (float32 elements: 128 MB), and the most rows
# one evaluation window feeds the output layer.
EVAL_LOGITS_ELEMENTS = 1 << 25
EVAL_ROWS = 4096


@torch.no_grad()
def evaluate_stream(
    model: RNNLanguageModel, ids: torch.Tensor, batch_size: int, bptt: int,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Summed NLL over every target token of ``ids`` (all but the first), and their count.

    The stream is cut into ``batch_size`` contiguous rows read with the state carried, each
    starting from an empty state (``batch_size=1`` predicts every token from all before it); the few
    targets past the last full row are then read as one more row that continues the last row's
    state, so no token is dropped and none is counted twice. The model is put in eval mode.
    With the state carried, the window length changes nothing but speed, so evaluation reads
    long windows (see ``eval_window``) and reuses one logits buffer across them.
    """
    model.eval()
    batch_size = max(1, min(batch_size, ids.numel() - 1))
    streams = batchify(ids, batch_size).to(device)  # (B, L + 1)
    window = eval_window(bptt, batch_size, model.vocab_size)
    lengths = window_lengths(streams.shape[1] - 1, window)
    buffer = _logits_buffer(model, batch_size * max(lengths, default=0), streams.device)
    total, count, state = 0.0, 0, None
    for inputs, targets in windows(streams, lengths):
        loss, state = model.nll(inputs, targets, state, reduction="sum", logits_buffer=buffer)
        total += float(loss)
        count += targets.numel()
    covered = batch_size * (streams.shape[1] - 1)  # targets are ids[1 : covered + 1]
    tail = ids[covered:].to(device)
    if tail.numel() > 1:
        tail_state = select_state(state, slice(batch_size - 1, batch_size))
        loss, _ = model.nll(tail[None, :-1], tail[None, 1:], tail_state, reduction="sum",
                            logits_buffer=buffer)
        total += float(loss)
        count += tail.numel() - 1
    return total, count


def eval_window(bptt: int, batch_size: int, vocab_size: int) -> int:
    """Steps per evaluation window: as many as ``EVAL_ROWS`` rows and the logits budget allow.

    The output layer's matmul runs faster on more rows (200 features over 10,000 words: 2,800
    rows at a time ran ~13% faster per row than 700 on the 2-core EPYC), and a longer window
    means fewer calls into the recurrent stack. Never shorter than ``bptt``.
    """
    rows = min(EVAL_ROWS, EVAL_LOGITS_ELEMENTS // max(1, vocab_size))
    return max(bptt, rows // batch_size)


def _logits_buffer(model: RNNLanguageModel, rows: int, device: torch.device) -> torch.Tensor | None:
    """A flat float32 buffer for ``rows`` rows of logits, where the CPU softmax can use it."""
    # The adaptive softmax never builds full logits, and CUDA's allocator caches its memory.
    decoder = model.decoder
    if decoder is None or decoder.weight.dtype != torch.float32 or device.type != "cpu":
        return None
    return torch.empty(rows * model.vocab_size, dtype=torch.float32, device=device)
