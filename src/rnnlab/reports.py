"""What the terminal shows of training, evaluation and generation: run summaries, reports,
samples and progress. Tables (runs, presets, corpora) are :mod:`rnnlab.tables`'; pictures are
:mod:`rnnlab.plots`'.

Each function returns text; the CLI decides where it goes.
"""

from __future__ import annotations

import json
import math
import sys
import time
import typing
from typing import TYPE_CHECKING, Any

from rnnlab.config import RunConfig
from rnnlab.lines.inference import known_lines, novelty

if TYPE_CHECKING:
    from rnnlab.lm.inference import LanguageModel

# --- training ----------------------------------------------------------------------------------


def run_header(config: RunConfig, out: str | None) -> str:
    data = config.data.corpus or config.data.text_path or config.data.train_path
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


def prediction_line(text: str, result: dict[str, Any]) -> str:
    """One JSON line for ``rnnlab predict``: the text, its label and rounded probabilities (a
    text without tokens keeps its ``error`` field)."""
    line = {"text": text, **result}
    if result["probs"] is not None:
        line["probs"] = {name: round(float(p), 6) for name, p in result["probs"].items()}
    return json.dumps(line, ensure_ascii=False)
