"""Pictures of runs: learning curves and a classifier's confusion matrix, as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab.errors import RnnlabError


def _rate_key(record: dict[str, Any]) -> str | None:
    return next((k for k in record if k.endswith("_per_s")), None)


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Draw train/valid loss, the task metric, learning rate and throughput of runs into a PNG."""
    plt = _pyplot()
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
    plt = _pyplot()
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




def _pyplot() -> Any:
    """matplotlib's pyplot drawing off-screen; a one-line error when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise RnnlabError("plotting needs matplotlib: pip install 'rnnlab[plot]'") from None
    return plt
