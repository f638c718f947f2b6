"""Adaptive evaluation: one pass over a stream with dynamic evaluation (``lm/dynamic.py``), the
neural cache (``lm/cache.py``) or both, and the search of their settings on validation text.

The stream is read once, in order, as one row (batch 1) with the state carried: each segment is
scored with the current weights and the cache of the past, THEN its pairs join the cache and its
gradient updates the weights. The cache takes no part in the update: the gradient is that of the
model's own NLL (Krause et al., 2018 adapt the model alone; Grave et al., 2017 add the cache).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from rnnlab.atomic import atomic_write_text
from rnnlab.errors import RnnlabError
from rnnlab.lm.cache import CacheSettings, NeuralCache, interpolate
from rnnlab.lm.dynamic import (
    STATS_FILE,
    STATS_TOKENS,
    DynamicSettings,
    DynamicUpdater,
    detach_state,
    gradient_stats,
    load_stats,
    save_stats,
    segment_log_probs,
    stats_segments,
    weights_digest,
)
from rnnlab.lm.evaluation import perplexity
from rnnlab.models.language_model import RNNLanguageModel

ADAPTIVE_FILE = "adaptive.json"
TUNE_TOKENS = 20_000  # tuning reads this prefix of the validation split, for speed
CACHE_SEGMENT = 256  # tokens scored at once when only the cache adapts (no update to wait for)
# The step is lr * g / (sqrt(MS) + eps): weights whose RMS is far below eps take plain SGD steps
# of lr / eps, the others RMS-normalised ones. Weights rarely moved in training have tiny RMS, and
# a small eps lets one surprising token throw them far, so eps is searched with lr = eps first.
EPS_GRID = [1e-4, 3e-4, 1e-3, 3e-3]
LR_FACTORS = [0.5, 2.0]  # then lr around eps
DECAY_GRID = [1e-3, 1e-2, 3e-2, 1e-1]
WINDOW_GRID = [100, 500, 2000]
THETA_GRID = [0.03, 0.1, 0.3, 1.0]
LAMBDA_GRID = [0.05, 0.1, 0.2, 0.3]


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


Progress = Callable[[int, str], Bar]  # (total, description) -> a bar


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(progress: Progress | None, total: int, desc: str) -> Bar:
    return _Silent() if progress is None else progress(total, desc)


def mode_name(dynamic: bool, cache: bool) -> str:
    return "+".join(name for name, on in (("dynamic", dynamic), ("cache", cache)) if on)


def adaptive_nll(
    model: RNNLanguageModel, ids: torch.Tensor, *, dynamic: DynamicSettings | None = None,
    stats: dict[str, torch.Tensor] | None = None, cache: CacheSettings | None = None,
    segment: int = 20, per_token: bool = False, record: bool = False,
    progress: Progress | None = None, desc: str = "adaptive evaluation",
) -> dict[str, Any]:
    """Summed NLL over the targets of ``ids`` (N,) read once, in order, batch 1.

    Returns ``total`` (nats), ``count``; with ``per_token`` the (N-1,) NLL of every target; with
    ``record`` the (N-1,) model log-probs and (N-1, D) features, for tuning the cache. With
    ``dynamic`` the weights adapt (``stats`` needed) and are restored at the end, even on error.
    """
    if ids.numel() < 2:
        raise RnnlabError("the text needs at least two tokens to be scored")
    model.eval()
    device = next(model.parameters()).device
    ids = ids.to(device=device, dtype=torch.long)  # a mapped corpus is uint16/uint32
    updater = None
    if dynamic is not None:
        if stats is None:
            raise RnnlabError("dynamic evaluation needs the gradient statistics")
        updater = DynamicUpdater(model, stats, dynamic) if dynamic.lr > 0 else None
        segment = dynamic.segment  # lr 0: the weights never move, no gradient is needed
    memory = NeuralCache(cache) if cache is not None else None
    n = ids.numel() - 1
    bar = _bar(progress, -(-n // segment), desc)
    total, state = 0.0, None
    kept: dict[str, list[torch.Tensor]] = {"nll": [], "lp": [], "features": []}
    try:
        for start in range(0, n, segment):
            targets = ids[start + 1 : start + segment + 1]
            inputs = ids[start : start + targets.numel()]
            with torch.set_grad_enabled(updater is not None):
                log_probs, features, state = segment_log_probs(model, inputs, targets, state)
            scored = log_probs.detach().float()
            if memory is not None:
                scored = memory.mix(features, targets, scored)
            total -= float(scored.double().sum())
            if per_token:
                kept["nll"].append(-scored.cpu())
            if record:
                kept["lp"].append(log_probs.detach().float().cpu())
                kept["features"].append(features.detach().float().cpu())
            if updater is not None:  # only now, after the segment has been scored
                (-log_probs.mean()).backward()
                updater.step()
            state = detach_state(state)
            bar.update(1)
    finally:
        if updater is not None:
            updater.restore()
        bar.close()
    result: dict[str, Any] = {"total": total, "count": n}
    if per_token:
        result["token_nll"] = torch.cat(kept["nll"])
    if record:
        result["log_probs"] = torch.cat(kept["lp"])
        result["features"] = torch.cat(kept["features"])
    return result


def cached_stats(model: RNNLanguageModel, train_ids: torch.Tensor, segment: int,
                 run_dir: Path | None, progress: Progress | None = None,
                 ) -> dict[str, torch.Tensor]:
    """Gradient statistics from ``RUN/dynamic-stats.safetensors`` when they were made for these
    weights and this segment length; otherwise computed from the training split (and stored)."""
    digest = weights_digest(model)
    path = None if run_dir is None else Path(run_dir) / STATS_FILE
    if path is not None:
        stats = load_stats(path, digest, segment)
        if stats is not None:
            return stats
    bar = _bar(progress, stats_segments(train_ids, segment, STATS_TOKENS), "gradient statistics")
    try:
        stats = gradient_stats(model, train_ids, segment, STATS_TOKENS, progress=bar.update)
    finally:
        bar.close()
    if path is not None:
        save_stats(path, stats, digest, segment, min(train_ids.numel() - 1, STATS_TOKENS))
    return stats


# --- tuning on validation text -----------------------------------------------------------------


def tune(model: RNNLanguageModel, valid_ids: torch.Tensor, *, dynamic: bool, cache: bool,
         stats: dict[str, torch.Tensor] | None, base_dynamic: DynamicSettings,
         base_cache: CacheSettings, fixed: set[str], tokens: int = TUNE_TOKENS,
         progress: Progress | None = None) -> dict[str, Any]:
    """Settings that minimise NLL on the first ``tokens`` validation tokens: a grid over eps
    (with lr = eps), then lr around it, then decay; and a grid over window, theta and lambda on
    the states of one pass with the chosen dynamic settings. Names in ``fixed`` keep their
    ``base_*`` value."""
    ids = valid_ids[: tokens + 1]
    trials: list[dict[str, Any]] = []
    best_dyn = dataclasses.replace(base_dynamic) if dynamic else None
    if dynamic:
        best_dyn = _tune_dynamic(model, ids, stats, base_dynamic, fixed, trials, progress)
    best_cache = None
    if cache:
        passed = adaptive_nll(model, ids, dynamic=best_dyn, stats=stats, record=True,
                              segment=CACHE_SEGMENT, progress=progress, desc="tuning: states")
        best_cache = _tune_cache(passed, ids[1:], base_cache, fixed, trials)
    best = min(trials, key=lambda t: t["nll"])
    return {"dynamic": dataclasses.asdict(best_dyn) if best_dyn else None,
            "cache": dataclasses.asdict(best_cache) if best_cache else None,
            "tune_tokens": ids.numel() - 1, "tune_ppl": perplexity(best["nll"]),
            "trials": trials}


def _tune_dynamic(model: RNNLanguageModel, ids: torch.Tensor, stats: Any,
                  base: DynamicSettings, fixed: set[str], trials: list[dict[str, Any]],
                  progress: Progress | None) -> DynamicSettings:
    scores: dict[tuple[float, float, float], float] = {}

    def trial(lr: float, eps: float, decay: float) -> float:
        if (lr, eps, decay) not in scores:
            settings = dataclasses.replace(base, lr=lr, eps=eps, decay=decay)
            out = adaptive_nll(model, ids, dynamic=settings, stats=stats, progress=progress,
                               desc=f"tuning: lr {lr:g} eps {eps:g} decay {decay:g}")
            nll = out["total"] / out["count"]
            scores[lr, eps, decay] = nll if math.isfinite(nll) else math.inf
            trials.append({"lr": lr, "eps": eps, "decay": decay, "nll": nll})
        return scores[lr, eps, decay]

    epss = [base.eps] if "eps" in fixed else EPS_GRID
    decay = base.decay if "decay" in fixed else 0.0
    pairs = [(base.lr if "lr" in fixed else e, e) for e in epss]
    if "lr" not in fixed:
        pairs.append((0.0, epss[0]))  # no adaptation at all, if nothing beats it
    lr, eps = min(pairs, key=lambda pair: trial(*pair, decay))
    if lr == 0:
        return dataclasses.replace(base, lr=0.0, eps=eps, decay=decay)
    if "lr" not in fixed:
        lr = min([lr, *(lr * f for f in LR_FACTORS)], key=lambda v: trial(v, eps, decay))
    if "decay" not in fixed:
        decay = min([0.0, *DECAY_GRID], key=lambda v: trial(lr, eps, v))
    return dataclasses.replace(base, lr=lr, eps=eps, decay=decay)


def _tune_cache(passed: dict[str, Any], targets: torch.Tensor, base: CacheSettings,
                fixed: set[str], trials: list[dict[str, Any]]) -> CacheSettings:
    windows = [base.window] if "window" in fixed else WINDOW_GRID
    thetas = [base.theta] if "theta" in fixed else THETA_GRID
    lams = [base.lam] if "lam" in fixed else [0.0, *LAMBDA_GRID]
    best, best_nll = base, math.inf
    targets = targets.cpu()
    for window in windows:
        for theta in thetas:
            settings = CacheSettings(window=window, theta=theta, lam=1.0)
            memory = NeuralCache(settings)
            pieces = [memory.pointer(passed["features"][s : s + CACHE_SEGMENT],
                                     targets[s : s + CACHE_SEGMENT])
                      for s in range(0, targets.numel(), CACHE_SEGMENT)]
            log_cache = torch.cat([p[0] for p in pieces])
            seen = torch.cat([p[1] for p in pieces])
            for lam in lams:
                nll = -float(interpolate(passed["log_probs"], log_cache, seen, lam).double()
                             .mean())
                trials.append({"window": window, "theta": theta, "lambda": lam, "nll": nll})
                if nll < best_nll:
                    best, best_nll = CacheSettings(window=window, theta=theta, lam=lam), nll
    return best


# --- adaptive.json -----------------------------------------------------------------------------


def read_adaptive(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None or not (Path(run_dir) / ADAPTIVE_FILE).is_file():
        return {}
    try:
        return json.loads((Path(run_dir) / ADAPTIVE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RnnlabError(f"{Path(run_dir) / ADAPTIVE_FILE} is not readable JSON ({exc}); "
                          f"remove it and tune again") from None


def write_adaptive(run_dir: Path, mode: str, record: dict[str, Any]) -> None:
    """Record one mode's tuned settings beside the others already recorded (atomic write)."""
    records = read_adaptive(run_dir)
    records[mode] = record
    atomic_write_text(Path(run_dir) / ADAPTIVE_FILE, json.dumps(records, indent=2) + "\n")
