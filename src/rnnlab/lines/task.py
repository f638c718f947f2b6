"""Line-by-line language modelling as a Task: length-bucketed batches of whole lines, each read
from a fresh state (or its label's), with the padding never scored."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab.config import RunConfig
from rnnlab.data.batching import bucket_batches, sorted_batches
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError
from rnnlab.lines.data import LineBatch, LineData, LineSet, load_line_data
from rnnlab.lines.model import LineLanguageModel
from rnnlab.lm.evaluation import bits, perplexity

LINES_INFO = "lines.json"  # the run's line counts, split and skipped empty lines


class LineTask:
    """Train a :class:`LineLanguageModel` on the training lines; select by valid loss.

    The loss is the mean NLL per target token, the ``</s>`` that ends each line included.
    """

    best_metric = "loss"
    higher_is_better = False
    unit = "tokens"

    def __init__(self, model: LineLanguageModel, data: LineData, config: RunConfig,
                 device: torch.device):
        self.model = model
        self.data = data
        self.config = config
        self.device = device
        self.label_names = data.label_names  # None without labels

    @property
    def vocab(self) -> Vocab:
        return self.data.vocab

    def shard(self, rank: int, world: int) -> bool:
        """False: every rank draws the same batches and the Trainer gives each its lines."""
        return False

    def _batches(self, epoch: int) -> list:
        train = self.data.sets["train"]
        return bucket_batches(train.lengths, self.config.data.batch_size, self.config.train.seed,
                              epoch)

    def steps_per_epoch(self) -> int:
        return len(self._batches(0))

    def batches(self, epoch: int, start: int = 0) -> Iterator[LineBatch]:
        train = self.data.sets["train"]
        for index in self._batches(epoch)[start:]:
            yield train.batch(torch.from_numpy(index))

    def train_loss(self, batch: LineBatch) -> tuple[torch.Tensor, int]:
        loss = self.model.mean_nll(*_on(batch, self.device))
        return loss, int(batch.lengths.sum())

    def lr_factor(self, batch: Any) -> float:
        return 1.0  # every batch takes the scheduled learning rate

    def evaluate(self, split: str) -> dict[str, float]:
        if split not in self.data.sets:
            raise RnnlabError(f"this run's data has no {split} split "
                              f"(it has {', '.join(self.data.sets)})")
        return evaluate_lines(self.model, self.data.sets[split],
                              self.config.data.eval_batch_size, self.device)

    def state_dict(self) -> dict[str, Any]:
        # Batches are a pure function of (seed, epoch): only the data's identity is checked.
        return {"train_lines": len(self.data.sets["train"]), "labels": self.label_names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = self.state_dict()
        for key, value in state.items():
            if key in expected and expected[key] != value:
                raise RnnlabError(f"the checkpoint was trained with {key} = {value}, but the "
                                  f"data now gives {expected[key]}; resume with the same data")

    def save_artifacts(self, run_dir: str | Path) -> None:
        """The vocabulary with the label names (if any), and the split's line counts."""
        ckpt.save_artifacts(run_dir, self.vocab, self.label_names)
        ckpt.atomic_write_text(Path(run_dir) / LINES_INFO,
                               json.dumps(self.data.stats, indent=2) + "\n")


def _on(batch: LineBatch, device: torch.device) -> tuple:
    labels = None if batch.labels is None else batch.labels.to(device)
    # lengths stay on the CPU: packing wants them there
    return (batch.inputs.to(device, non_blocking=True), batch.targets.to(device, non_blocking=True),
            batch.lengths, labels)


@torch.no_grad()
def line_nll(model: LineLanguageModel, lines: LineSet, batch_size: int,
             device: torch.device | str) -> torch.Tensor:
    """(N,) summed NLL in nats of each line of ``lines`` (its ``</s>`` included), in order."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(lines), dtype=torch.float64)
    try:
        for index in sorted_batches(lines.lengths, batch_size):
            index = torch.from_numpy(index)
            nll = model.token_nll(*_on(lines.batch(index), torch.device(device)))  # (B, T)
            totals[index] = nll.double().sum(dim=1).cpu()
    finally:
        model.train(was_training)
    return totals


def evaluate_lines(model: LineLanguageModel, lines: LineSet, batch_size: int,
                   device: torch.device | str) -> dict[str, float]:
    """Nats and bits per token (``</s>`` included), perplexity and mean NLL per line."""
    total = float(line_nll(model, lines, batch_size, device).sum())
    tokens = int(lines.lengths.sum())
    loss = total / tokens
    return {"loss": loss, "ppl": perplexity(loss), "bits": bits(loss),
            "nll_per_line": total / len(lines), "lines": len(lines), "tokens": tokens}


def build_line_task(config: RunConfig, device: torch.device) -> LineTask:
    """Read the configured lines and make a fresh model for them, on ``device``."""
    data = load_line_data(config)
    labels = len(data.label_names) if data.label_names else 0
    model = LineLanguageModel(config.model, len(data.vocab), labels).to(device)
    skipped = data.stats["empty_lines_skipped"]
    if skipped:
        warnings.warn(f"skipped {skipped} empty line{'s' if skipped > 1 else ''} "
                      f"(counted in {LINES_INFO})", stacklevel=2)
    return LineTask(model, data, config, device)
