"""Measuring a language model: summed NLL over a token stream, and the metrics made from it.

Metrics are computed the standard way, from the mean negative log-likelihood per token.
"""

from __future__ import annotations

import math

import torch

from rnnlab import fast
from rnnlab.data.batching import batchify, window_lengths, windows
from rnnlab.models.cells import select_state
from rnnlab.models.language_model import RNNLanguageModel

# The largest logits buffer evaluation keeps (float32 elements: 128 MB), and the most rows
# one evaluation window feeds the output layer.
EVAL_LOGITS_ELEMENTS = 1 << 25
EVAL_ROWS = 4096


def perplexity(nll: float) -> float:
    """exp(mean NLL in nats); capped so a diverged model prints inf rather than overflowing."""
    return math.exp(nll) if nll < 700 else float("inf")


def bits(nll: float) -> float:
    """Nats to bits (bits per token; bits per character at char level)."""
    return nll / math.log(2)


def lm_metrics(total_nll: float, count: int) -> dict[str, float]:
    """Mean NLL (``loss``), perplexity and bits per token from a summed NLL over ``count``."""
    nll = total_nll / count
    return {"loss": nll, "ppl": perplexity(nll), "bits": bits(nll), "tokens": count}


def unigram_nll(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Mean NLL of ``eval_ids`` under add-one-smoothed unigram frequencies of ``train_ids``."""
    if train_ids.dtype != torch.long:  # a mapped corpus: counted a block at a time
        counts = _block_counts(train_ids, vocab_size).double() + 1.0
        log_probs = counts.log() - counts.sum().log()
        return float(-(_block_counts(eval_ids, vocab_size).double() * log_probs).sum()
                     / eval_ids.numel())
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    log_probs = counts.log() - counts.sum().log()
    return float(-log_probs[eval_ids].mean())


def _block_counts(ids: torch.Tensor, vocab_size: int, block: int = 1 << 24) -> torch.Tensor:
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for start in range(0, ids.numel(), block):
        counts += torch.bincount(ids[start : start + block].long(), minlength=vocab_size)
    return counts


@torch.no_grad()
def evaluate_stream(
    model: RNNLanguageModel, ids: torch.Tensor, batch_size: int, bptt: int,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Summed NLL over every target token of ``ids`` (N,) (all but the first), and their count.

    The stream is cut into ``batch_size`` contiguous rows read with the state carried, each
    starting from an empty state (``batch_size=1`` predicts every token from all before it); the few
    targets past the last full row are then read as one more row that continues the last row's
    state, so no token is dropped and none is counted twice. The model is put in eval mode.
    With the state carried, the window length changes nothing but speed, so evaluation reads
    long windows (see ``eval_window``) and reuses one logits buffer across them.
    """
    model.eval()
    batch_size = max(1, min(batch_size, ids.numel() - 1))
    streams = batchify(ids, batch_size)  # (B, L + 1)
    if streams.dtype == torch.long:  # compact ids stay mapped: windows() copies each one
        streams = streams.to(device)
    window = eval_window(bptt, batch_size, model.vocab_size)
    lengths = window_lengths(streams.shape[1] - 1, window)
    rows = batch_size * max(lengths, default=0)
    buffer = fast.logits_buffer(model.decoder, rows, torch.device(device))  # None: fast off
    total, count, state = 0.0, 0, None
    for inputs, targets in windows(streams, lengths, device=device):
        loss, state = model.nll(inputs, targets, state, reduction="sum", logits_buffer=buffer)
        total += float(loss)
        count += targets.numel()
    covered = batch_size * (streams.shape[1] - 1)  # targets are ids[1 : covered + 1]
    tail = ids[covered:].to(device=device, dtype=torch.long)
    if tail.numel() > 1:
        tail_state = select_state(state, slice(batch_size - 1, batch_size))
        loss, _ = model.nll(tail[None, :-1], tail[None, 1:], tail_state, reduction="sum",
                            logits_buffer=buffer)
        total += float(loss)
        count += tail.numel() - 1
    return total, count


def eval_window(bptt: int, batch_size: int, vocab_size: int) -> int:
    """Steps per evaluation window: as many as ``EVAL_ROWS`` rows and the logits budget allow.

    The output layer's matmul is cheaper per row on more rows at a time, and a longer window
    means fewer calls into the recurrent stack. Never shorter than ``bptt``.
    """
    rows = min(EVAL_ROWS, EVAL_LOGITS_ELEMENTS // max(1, vocab_size))
    return max(bptt, rows // batch_size)
