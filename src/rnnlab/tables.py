"""What the terminal shows of runs, presets, config keys, corpora and prepared data: one line
per item, or a few lines of summary. Each function returns text; the CLI decides where it goes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab.config import SECTIONS, RunConfig
from rnnlab.config_resolve import TASK_ONLY
from rnnlab.errors import RnnlabError


def config_keys() -> str:
    """Every key that ``--set``, config files and presets accept: type, default, task."""
    defaults = RunConfig()
    rows = [("task", "str", defaults.task), ("preset", "str | None", None)]
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            kind = str(hint) if typing.get_args(hint) else hint.__name__  # list[int], str
            rows.append((f"{section}.{f.name}", kind,
                         getattr(getattr(defaults, section), f.name)))
    lines = []
    for key, kind, value in rows:
        shown = "none" if value is None else json.dumps(value)
        only = f"  ({TASK_ONLY[key]} only)" if key in TASK_ONLY else ""
        lines.append(f"{key:26} {kind:14} {shown}{only}")
    return "\n".join(lines)


def presets_table(presets: dict[str, dict[str, Any]]) -> str:
    """One line per preset (name -> its raw TOML table): name, task, description."""
    return "\n".join(f"{name:14} {raw.get('task', 'lm'):9} {raw.get('description', '')}"
                     for name, raw in presets.items())


def corpora_table(corpora: dict[str, Any], root: Path) -> str:
    """One line per known corpus (whether its files are under ``root``), then ``root``."""
    lines = []
    for name, corpus in sorted(corpora.items()):
        present = all((root / f.path).exists() for f in corpus.files)
        state = "built-in" if not corpus.files else ("present" if present else "not downloaded")
        lines.append(f"{name:16} {corpus.task:9} {state:15} {corpus.description}")
    return "\n".join([*lines, f"data directory: {root}"])


def list_runs(folder: str | Path) -> list[dict[str, Any]]:
    """One row per run directory under ``folder`` (recursively): task, data, best, steps, size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RnnlabError(f"not a directory: {folder}")
    rows = []
    for config_path in sorted(folder.rglob(ckpt.CONFIG)):
        run_dir = config_path.parent
        try:
            config = ckpt.load_config(run_dir)
        except RnnlabError as exc:
            rows.append({"run": str(run_dir), "error": str(exc)})
            continue
        evals = ckpt.read_metrics(run_dir)
        best = next((r for r in reversed(evals) if r.get("best")), None)
        metric = "accuracy" if config.task == "classify" else "ppl"
        size = sum(f.stat().st_size for f in run_dir.iterdir() if f.is_file())
        rows.append({
            "run": str(run_dir),
            "task": config.task,
            "data": config.data.corpus or config.data.text_path or config.data.train_path,
            "preset": config.preset,
            "best": None if best is None else best.get(metric),
            "metric": metric,
            "steps": evals[-1]["step"] if evals else 0,
            "size_mb": round(size / 1e6, 1),
        })
    return rows


def format_runs(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'run':40} {'task':8} {'data':16} {'preset':12} {'best':>12} {'steps':>7} "
             f"{'size':>8}"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['run']:40} ! {row['error']}")
            continue
        best = row["best"]
        shown = "-" if best is None or (isinstance(best, float) and math.isnan(best)) else (
            f"{row['metric']} {best:.4g}")
        lines.append(f"{row['run']:40} {row['task']:8} {str(row['data'])[:16]:16} "
                     f"{str(row['preset'])[:12]:12} {shown:>12} {row['steps']:>7} "
                     f"{row['size_mb']:>6.1f}MB")
    return "\n".join(lines)


def prepared_summary(prepared: Any) -> str:
    """What ``rnnlab data prepare`` wrote: the folder, its vocabulary and each split's ids."""
    lines = [f"prepared data: {prepared.folder} ({prepared.status})",
             f"vocabulary: {len(prepared.vocab)} {prepared.vocab.level} types"]
    for name, ids in prepared.splits.items():
        lines.append(f"{name}: {ids.numel():,} tokens ({prepared.unknown[name]:,} unknown), "
                     f"{str(ids.dtype).removeprefix('torch.')}, {name}.bin")
    return "\n".join(lines)
