"""Seeing runs: learning-curve plots and a table of the runs in a folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab.errors import RnnlabError


def _rate_key(record: dict[str, Any]) -> str | None:
    return next((k for k in record if k.endswith("_per_s")), None)


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Draw train/valid loss, the task metric, learning rate and throughput of runs into a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise RnnlabError("plotting needs matplotlib: pip install 'rnnlab[plot]'") from None
    runs = []
    for run_dir in run_dirs:
        config = ckpt.load_config(run_dir)  # also checks that it is a run directory
        evals = ckpt.read_metrics(run_dir)
        train = ckpt.read_metrics(run_dir, ckpt.TRAIN_LOG)
        if not evals and not train:
            raise RnnlabError(f"{run_dir} has no metrics yet")
        runs.append((Path(run_dir).name, config, evals, train))
    metric = "accuracy" if runs[0][1].task == "classify" else "ppl"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    loss_ax, metric_ax, lr_ax, rate_ax = axes.flat
    for name, _config, evals, train in runs:
        if train:
            line, = loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train],
                                 alpha=0.5, label=f"{name} train")
            color = line.get_color()
        else:
            color = None
        if evals:
            steps = [r["step"] for r in evals]
            loss_ax.plot(steps, [r["loss"] for r in evals], "o-", color=color,
                         label=f"{name} valid")
            values = [r.get(metric) for r in evals]
            metric_ax.plot(steps, values, "o-", color=color, label=name)
        curve = train or evals
        lr_ax.plot([r["step"] for r in curve], [r["lr"] for r in curve], color=color, label=name)
        key = _rate_key(curve[0])
        if key:
            rate_ax.plot([r["step"] for r in curve], [r[key] for r in curve], color=color,
                         label=name)
            rate_ax.set_ylabel(key.replace("_", " "))
    loss_ax.set_ylabel("loss (nats)")
    metric_ax.set_ylabel(f"valid {metric}")
    if metric == "ppl":
        metric_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(", ".join(name for name, *_ in runs))
    fig.tight_layout()
    out = Path(out)
    _save_figure(fig, out)
    plt.close(fig)
    return out


def plot_confusion(report: dict[str, Any], out: str | Path) -> Path:
    """The confusion matrix of a classification report as a PNG (rows: true classes)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RnnlabError("plotting needs matplotlib: pip install 'rnnlab[plot]'") from None
    names, matrix = report["labels"], report["confusion"]
    size = 1.2 + 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > peak / 2 else "black")
    ax.set_title(f"accuracy {report['accuracy']:.4f}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    out = Path(out)
    _save_figure(fig, out)
    plt.close(fig)
    return out


def _save_figure(fig: Any, out: Path) -> None:
    """Save through the project's atomic writer: a crash never leaves a torn image at ``out``."""
    with ckpt.atomic_open(out, "wb") as handle:
        fig.savefig(handle, dpi=110, format=out.suffix[1:].lower() or "png")


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
            "data": config.data.corpus or config.data.text or config.data.train,
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
