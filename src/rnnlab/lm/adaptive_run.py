"""Adaptive evaluation of a run: which settings to use (given, tuned and recorded in
``RUN/adaptive.json``, or the defaults), the gradient statistics, and the metrics."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rnnlab.errors import RnnlabError
from rnnlab.lm.adaptive import (
    CACHE_SEGMENT,
    Progress,
    adaptive_nll,
    cached_stats,
    mode_name,
    read_adaptive,
    tune,
    write_adaptive,
)
from rnnlab.lm.cache import CacheSettings
from rnnlab.lm.dynamic import DynamicSettings, weights_digest
from rnnlab.lm.evaluation import lm_metrics
from rnnlab.models.language_model import RNNLanguageModel

# Tokens per dynamic-evaluation segment by default: characters carry less per token.
DEFAULT_SEGMENT = {"word": 20, "char": 50}


def adaptive_evaluate(
    model: RNNLanguageModel, ids: torch.Tensor, train_ids: Callable[[], torch.Tensor],
    run_dir: Path | None, level: str, *, dynamic: bool | dict[str, Any] = False,
    cache: bool | dict[str, Any] = False, tune: bool = False, progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of ``ids`` (N,) read once with dynamic evaluation and/or the cache.

    With ``tune``, ``ids`` is the valid split: the settings are searched on its first tokens
    (``adaptive.TUNE_TOKENS``), recorded in ``RUN/adaptive.json``, and the whole of ``ids`` is
    then measured with them. Without, the settings recorded for this mode and these weights are
    used, else the defaults; values given in the ``dynamic``/``cache`` dicts win either way.
    """
    mode = mode_name(bool(dynamic), bool(cache))
    given_dyn = _given(dynamic, DynamicSettings)
    given_cache = _given(cache, CacheSettings)
    digest = weights_digest(model)
    records = {} if tune else {
        name: entry for name, entry in read_adaptive(run_dir).items()
        if isinstance(entry, dict) and entry.get("weights_sha256") == digest}  # these weights
    # Both together: settings tuned for the pair, else those each method was tuned with alone.
    recorded = records.get(mode)
    dyn_record = (recorded or records.get("dynamic") or {}).get("dynamic")
    cache_record = (recorded or records.get("cache") or {}).get("cache")
    dyn = DynamicSettings(segment=DEFAULT_SEGMENT.get(level, 20))
    cch = CacheSettings()
    dyn = DynamicSettings(**dyn_record) if dynamic and dyn_record else dyn
    cch = CacheSettings(**cache_record) if cache and cache_record else cch
    recorded = recorded or (dyn_record if dynamic else None) or (cache_record if cache else None)
    dyn = dataclasses.replace(dyn, **given_dyn).validate()
    cch = dataclasses.replace(cch, **given_cache).validate()
    stats = None
    if dynamic:
        stats = cached_stats(model, train_ids(), dyn.segment, run_dir, progress)
    source = "tuned" if tune else "recorded" if recorded else "default"
    record: dict[str, Any] = {}
    if tune:
        record = tune_settings(model, ids, stats, bool(dynamic), bool(cache), dyn, cch,
                               set(given_dyn) | set(given_cache), progress)
        dyn = DynamicSettings(**record["dynamic"]) if record["dynamic"] else dyn
        cch = CacheSettings(**record["cache"]) if record["cache"] else cch
    out = adaptive_nll(model, ids, dynamic=dyn if dynamic else None, stats=stats,
                       cache=cch if cache else None, segment=CACHE_SEGMENT, progress=progress,
                       desc=f"{mode} evaluation")
    if not math.isfinite(out["total"]):
        raise RnnlabError(f"{mode} evaluation diverged (the loss is not finite) with "
                          f"{_describe(dyn, cch, bool(dynamic), bool(cache))}; tune on valid "
                          f"with --tune, or give smaller --dynamic-lr")
    metrics = lm_metrics(out["total"], out["count"]) | {"batch_size": 1, "adaptive": mode,
                                                        "settings": source}
    if dynamic:
        metrics["dynamic"] = dataclasses.asdict(dyn)
    if cache:
        metrics["cache"] = dataclasses.asdict(cch)
    if tune:
        record |= {"valid_ppl": metrics["ppl"], "valid_tokens": metrics["tokens"],
                   "weights_sha256": digest}
        if run_dir is not None:
            write_adaptive(Path(run_dir), mode, record)
        metrics |= {k: record[k] for k in ("tune_tokens", "tune_ppl", "tune_static_ppl")}
    return metrics


def tune_settings(model: RNNLanguageModel, valid_ids: torch.Tensor, stats: Any, dynamic: bool,
                  cache: bool, dyn: DynamicSettings, cch: CacheSettings, fixed: set[str],
                  progress: Progress | None) -> dict[str, Any]:
    """``adaptive.tune`` plus the static perplexity of the same prefix, for comparison."""
    record = tune(model, valid_ids, dynamic=dynamic, cache=cache, stats=stats, base_dynamic=dyn,
                  base_cache=cch, fixed=fixed, progress=progress)
    static = adaptive_nll(model, valid_ids[: record["tune_tokens"] + 1], segment=CACHE_SEGMENT)
    record["tune_static_ppl"] = lm_metrics(static["total"], static["count"])["ppl"]
    return record


def _given(value: bool | dict[str, Any], kind: type) -> dict[str, Any]:
    """The settings a caller gave in a dict (True: none); unknown names are refused."""
    if not isinstance(value, dict):
        return {}
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise RnnlabError(f"unknown {kind.__name__} setting {unknown[0]!r} "
                          f"(known: {', '.join(sorted(names))})")
    return {k: v for k, v in value.items() if v is not None}


def _describe(dyn: DynamicSettings, cch: CacheSettings, dynamic: bool, cache: bool) -> str:
    parts = [f"lr {dyn.lr:g}, decay {dyn.decay:g}"] if dynamic else []
    return "; ".join(parts + ([f"cache lambda {cch.lam:g}"] if cache else [])) or "no settings"
