"""Metrics computed the standard way: from the mean negative log-likelihood per token."""

from __future__ import annotations

import math

import torch


def perplexity(nll: float) -> float:
    """exp(mean NLL in nats); capped so a diverged model prints inf rather than overflowing."""
    return math.exp(nll) if nll < 700 else float("inf")


def bits(nll: float) -> float:
    """Nats to bits (bits per token; bits per character at char level)."""
    return nll / math.log(2)


def lm_metrics(total_nll: float, count: int) -> dict[str, float]:
    nll = total_nll / count
    return {"loss": nll, "ppl": perplexity(nll), "bits": bits(nll), "tokens": count}


def unigram_nll(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Mean NLL of ``eval_ids`` under add-one-smoothed unigram frequencies of ``train_ids``."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    log_probs = counts.log() - counts.sum().log()
    return float(-log_probs[eval_ids].mean())
