"""The neural cache (Grave et al., 2017, "Improving Neural Language Models with a Continuous
Cache"): a pointer distribution over the words that followed the recent hidden states.

The cache holds the last ``window`` pairs (h_i, x_{i+1}) of output-layer features and the token
that came next. At step t, with features h_t,

    p_cache(w) = sum_{i: x_{i+1} = w} exp(theta h_t . h_i) / sum_i exp(theta h_t . h_i)
    p(w)       = (1 - lambda) p_model(w) + lambda p_cache(w)     (linear interpolation)

Only pairs whose next token has already been read are in the cache; while it is empty (the
first token of a stream) p is p_model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rnnlab.errors import RnnlabError


@dataclass
class CacheSettings:
    """How many past states the cache holds, the sharpness theta, and the mixing weight."""

    window: int = 500
    theta: float = 0.3
    lam: float = 0.1

    def validate(self) -> CacheSettings:
        if self.window < 1:
            raise RnnlabError(f"the cache window must be at least 1, got {self.window}")
        if not 0 <= self.theta < math.inf:
            raise RnnlabError(f"the cache theta must be >= 0 and finite, got {self.theta}")
        if not 0 <= self.lam <= 1:
            raise RnnlabError(f"the cache lambda must be in [0, 1], got {self.lam}")
        return self


class NeuralCache:
    """The cache of one stream, read segment after segment (``mix`` then remembers them)."""

    def __init__(self, settings: CacheSettings):
        self.settings = settings.validate()
        self.keys: torch.Tensor | None = None  # (W, D) features h_i
        self.values: torch.Tensor | None = None  # (W,) the tokens x_{i+1} that followed them

    @torch.no_grad()
    def pointer(self, features: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, D) features and (T,) targets -> (T,) log p_cache(target) and (T,) whether any
        pair was visible; the segment's pairs then join the cache.

        Position t sees the cached pairs and the pairs of positions before t in this segment,
        at most ``window`` of them.
        """
        features = features.detach().float()
        s = self.settings
        past = 0 if self.keys is None else self.keys.shape[0]
        keys = features if self.keys is None else torch.cat([self.keys, features])  # (P+T, D)
        values = targets if self.values is None else torch.cat([self.values, targets])
        t = features.shape[0]
        scores = s.theta * features @ keys.T  # (T, P+T)
        j = torch.arange(past + t, device=features.device)[None]
        pos = past + torch.arange(t, device=features.device)[:, None]  # each query's index
        scores = scores.masked_fill((j >= pos) | (j < pos - s.window), -math.inf)
        norm = torch.logsumexp(scores, dim=-1)  # (T,) -inf where nothing is visible
        seen = torch.isfinite(norm)
        hits = torch.logsumexp(scores.masked_fill(values[None] != targets[:, None], -math.inf),
                               dim=-1)
        log_cache = torch.where(seen, hits - norm.where(seen, torch.zeros_like(norm)),
                                torch.full_like(norm, -math.inf))
        self.keys, self.values = keys[-s.window:], values[-s.window:]
        return log_cache, seen

    def mix(self, features: torch.Tensor, targets: torch.Tensor,
            model_log_probs: torch.Tensor) -> torch.Tensor:
        """(T, D) features, (T,) targets, (T,) model log-probs -> (T,) mixed log-probs."""
        log_cache, seen = self.pointer(features, targets)
        return interpolate(model_log_probs, log_cache, seen, self.settings.lam)


def interpolate(model_log_probs: torch.Tensor, log_cache: torch.Tensor, seen: torch.Tensor,
                lam: float) -> torch.Tensor:
    """log((1 - lam) p_model + lam p_cache) where the cache had pairs, else log p_model."""
    model_log_probs = model_log_probs.detach().float()
    if lam == 0:
        return model_log_probs
    kept = model_log_probs + math.log1p(-lam) if lam < 1 else torch.full_like(log_cache,
                                                                              -math.inf)
    return torch.where(seen, torch.logaddexp(kept, log_cache + math.log(lam)), model_log_probs)


def cache_probs(probs: torch.Tensor, query: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor, settings: CacheSettings) -> torch.Tensor:
    """The mixed next-token distribution for sampling, as a pure function.

    (N, V) model probabilities, (N, D) features now, (N, W) cached features and (N, W) the
    tokens that followed them -> (N, V) ``(1 - lambda) p_model + lambda p_cache``. With W = 0
    (nothing cached yet) the model's distribution comes back unchanged.
    """
    if keys.shape[1] == 0 or settings.lam == 0:
        return probs
    weights = torch.softmax(settings.theta * torch.einsum("nd,nwd->nw", query, keys), dim=-1)
    pointer = torch.zeros_like(probs).scatter_add_(-1, values, weights.to(probs.dtype))
    return (1 - settings.lam) * probs + settings.lam * pointer
