"""What the terminal shows: run summaries, evaluation reports, samples, tables and plots.

Each function returns text (or writes a PNG); the CLI decides where it goes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnlab import checkpoint as ckpt
from rnnlab.config import SECTIONS, RunConfig
from rnnlab.config_resolve import TASK_ONLY
from rnnlab.errors import RnnlabError

if TYPE_CHECKING:
    from rnnlab.lm.inference import LanguageModel

# --- training ----------------------------------------------------------------------------------


def run_header(config: RunConfig, out: str | None) -> str:
    data = config.data.corpus or config.data.text or config.data.train
    return (f"run: {out or '(default)'} | task {config.task} | preset {config.preset} | "
            f"data {data}")


def run_summary(result: Any) -> str:
    """Where a finished run lives and why it stopped (a ``TrainResult``)."""
    return (f"run directory: {result.run_dir}\n"
            f"stopped: {result.stop_reason} after {result.steps} steps, "
            f"{result.elapsed:.1f} s of training")


def budget_line(minutes: float, used_minutes: float) -> str:
    return (f"budget: {minutes:g} minutes in total, {used_minutes:.1f} already used, "
            f"{max(minutes - used_minutes, 0):.1f} left")


def lm_report(report: dict[str, Any]) -> str:
    """Best valid perplexity beside the baselines, and test perplexity (see
    ``runner.lm_final_report`` for the keys)."""
    if report.get("unit") == "line":
        return line_report(report)
    valid = report["valid_ppl"]
    line = f"valid ppl {valid:.2f} (best checkpoint) | unigram baseline {report['unigram_ppl']:.2f}"
    if "true_ppl" in report:
        true_ppl = report["true_ppl"]
        line += (f" | true source ppl {true_ppl:.2f} on valid (entropy rate: "
                 f"{report['entropy_rate_ppl']:.2f}) | model / true = {valid / true_ppl:.3f}")
    lines = [line]
    if "test" in report:
        test = report["test"]
        lines.append(f"test ppl {test['ppl']:.2f} | {test['bits']:.4f} bits per token")
    return "\n".join(lines)


def lm_samples(lm: LanguageModel, count: int) -> list[str]:
    """``count`` short samples at temperature 0.8, never the unknown symbol, one per line."""
    if count <= 0:
        return []
    if lm.line_mode:
        return line_samples(lm, count)
    vocab = lm.vocab
    prime = "" if vocab.level == "word" else ("\n" if "\n" in vocab else vocab.itos[1])
    texts = lm.generate(prime, 30 if vocab.level == "word" else 200, num_samples=count,
                        temperature=0.8, seed=1, skip=[vocab.unk] if vocab.unk else [])
    return [f"sample {i + 1}: {text.strip()}" for i, text in enumerate(texts)]


def line_report(report: dict[str, Any]) -> str:
    """A line model's best valid metrics and its test metrics (``lines.inference``'s keys)."""
    out = []
    for split in ("valid", "test"):
        if split in report:
            m = report[split]
            out.append(f"{split}: loss {m['loss']:.4f} nats/token ({m['bits']:.4f} bits, ppl "
                       f"{m['ppl']:.2f}, </s> included) | NLL per line {m['nll_per_line']:.3f} "
                       f"nats over {m['lines']:,} lines"
                       + (" (best checkpoint)" if split == "valid" else ""))
    return "\n".join(out)


def line_samples(lm: LanguageModel, count: int) -> list[str]:
    """``count`` whole lines sampled at temperature 1 (the model's own distribution), spread
    over the labels of a conditioned model, then their novelty."""
    from rnnlab.lines.inference import known_lines, novelty

    labels = lm.label_names or [None]
    skip = [lm.vocab.unk] if lm.vocab.unk else []
    out, texts = [], []
    for i, label in enumerate(labels):
        share = count // len(labels) + (i < count % len(labels))
        if share:
            got = lm.generate("", 100, label=label, num_samples=share, seed=1 + i, skip=skip)
            texts += got
            out += [f"sample {len(out) + j + 1}: " + (f"[{label}] " if label else "") + text
                    for j, text in enumerate(got)]
    return [*out, novelty_line(novelty(texts, known_lines(lm)))]


def novelty_line(counts: dict[str, int]) -> str:
    """makemore's three counts: samples that are training lines, held-out lines, or new."""
    return (f"novelty of {sum(counts.values())} samples: {counts['train']} in train, "
            f"{counts['valid/test']} in valid/test, {counts['new']} new")


# --- evaluation --------------------------------------------------------------------------------


def lm_eval_report(metrics: dict[str, Any], what: str, level: str, unk: str | None) -> str:
    """Loss, perplexity and bits of a language model on ``what`` (a split or a file)."""
    unit = "character" if level == "char" else "token"
    lines = [f"{what}: {metrics['tokens']:,} target {unit}s, batch size {metrics['batch_size']}",
             f"loss {metrics['loss']:.4f} nats/{unit} | ppl {metrics['ppl']:.2f} | "
             f"{metrics['bits']:.4f} bits/{unit}"]
    if "nll_per_line" in metrics:
        lines.append(f"{metrics['lines']:,} lines (each ends with </s>, counted above) | NLL "
                     f"per line {metrics['nll_per_line']:.4f} nats")
    if "unknown" in metrics:
        lines.append(f"unknown {unit}s mapped to {unk}: {metrics['unknown']:,}")
    if "adaptive" in metrics:
        lines.append(adaptive_line(metrics))
    return "\n".join(lines)


def adaptive_line(metrics: dict[str, Any]) -> str:
    """Which adaptive evaluation ran, with which settings (and, after tuning, on what)."""
    parts = [f"{metrics['adaptive']} evaluation, {metrics['settings']} settings"]
    if "dynamic" in metrics:
        d = metrics["dynamic"]
        parts.append(f"lr {d['lr']:g} decay {d['decay']:g} segment {d['segment']}")
    if "cache" in metrics:
        c = metrics["cache"]
        parts.append(f"cache window {c['window']} theta {c['theta']:g} lambda {c['lam']:g}")
    line = " | ".join(parts)
    if "tune_ppl" in metrics:
        line += (f"\ntuned on the first {metrics['tune_tokens']:,} valid tokens: ppl "
                 f"{metrics['tune_ppl']:.2f} (static {metrics['tune_static_ppl']:.2f}); "
                 f"recorded in RUN/adaptive.json")
    return line


def score_line(text: str, result: dict[str, Any]) -> str:
    """One JSON line for ``rnnlab score``: the text and its log-probability, counts, ppl."""
    ppl = result["ppl"]
    return json.dumps({"text": text, "logprob": round(result["logprob"], 6),
                       "tokens": result["tokens"], "unknown": result["unknown"],
                       "ppl": None if ppl is None or math.isinf(ppl) else round(ppl, 6)},
                      ensure_ascii=False)


class _PlainProgress:
    """Where no terminal shows a bar: one line when a slow step starts, one when it ends."""

    def __init__(self, total: int, desc: str, stream: typing.TextIO):
        self.desc, self.stream, self.done, self.total = desc, stream, 0, total
        self.start = time.monotonic()
        print(f"{desc}: {total:,} steps ...", file=stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n

    def close(self) -> None:
        print(f"{self.desc}: done in {time.monotonic() - self.start:.0f} s", file=self.stream,
              flush=True)


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar with ETA on stderr when it is a terminal; otherwise a plain start/end line."""
    stream = sys.stderr
    if not stream.isatty():
        return _PlainProgress(total, desc, stream)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=stream, dynamic_ncols=True, leave=False)


def classifier_report(report: dict[str, Any], split: str) -> str:
    """Accuracy, loss, macro F1, a per-class precision/recall/F1 table and the confusion matrix."""
    lines = [f"{split} split: {report['examples']:,} examples | accuracy "
             f"{report['accuracy']:.4f} | loss {report['loss']:.4f} | "
             f"macro F1 {report['macro_f1']:.4f}"]
    width = max(len(n) for n in report["labels"]) + 2
    lines.append(f"{'class':{width}} precision  recall     f1  support")
    for name in report["labels"]:
        row = report["per_class"][name]
        lines.append(f"{name:{width}} {row['precision']:9.4f} {row['recall']:7.4f} "
                     f"{row['f1']:6.4f} {row['support']:8d}")
    lines.append("confusion matrix (rows = true, columns = predicted):")
    lines.append(" " * width + " ".join(f"{n:>8}" for n in report["labels"]))
    for name, row in zip(report["labels"], report["confusion"], strict=True):
        lines.append(f"{name:{width}}" + " ".join(f"{v:8d}" for v in row))
    return "\n".join(lines)


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


# --- runs --------------------------------------------------------------------------------------


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


def prepared_summary(prepared: Any) -> str:
    """What ``rnnlab data prepare`` wrote: the folder, its vocabulary and each split's ids."""
    lines = [f"prepared data: {prepared.folder} ({prepared.status})",
             f"vocabulary: {len(prepared.vocab)} {prepared.vocab.level} types"]
    for name, ids in prepared.splits.items():
        lines.append(f"{name}: {ids.numel():,} tokens ({prepared.unknown[name]:,} unknown), "
                     f"{str(ids.dtype).removeprefix('torch.')}, {name}.bin")
    return "\n".join(lines)
