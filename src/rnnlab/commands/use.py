"""Using a trained run: ``rnnlab eval``, ``score``, ``predict`` and ``generate``."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab import plots, reports, runtime
from rnnlab.api import LanguageModel, TextClassifier
from rnnlab.classify.data import read_predict_file
from rnnlab.cli_parser import adaptive_options, sample_cache_options
from rnnlab.config import RunConfig
from rnnlab.data.text import read_text
from rnnlab.errors import RnnlabError
from rnnlab.lines.inference import known_lines, novelty
from rnnlab.quantize import use_quantization


def use_threads(requested: int | None, config: RunConfig) -> None:
    """``--threads``, else the run's own ``train.threads``: what it was tuned with, so that a
    run made for one thread (e.g. imdb-bilstm) does not evaluate on an oversubscribed CPU."""
    if requested is not None and requested < 0:
        raise RnnlabError(f"--threads must be 0 (PyTorch's default) or more, got {requested}")
    runtime.set_threads(config.train.threads if requested is None else requested)


def check_batch_size(batch_size: int | None) -> None:
    """``--batch-size``: absent (the run's own) or positive; 0 and below are mistakes."""
    if batch_size is not None and batch_size <= 0:
        raise RnnlabError(f"--batch-size must be positive, got {batch_size}")


def cmd_eval(args: argparse.Namespace) -> int:
    check_batch_size(args.batch_size)
    dynamic, cache = adaptive_options(args)
    args.split = args.split or ("valid" if args.tune else "test")
    config = ckpt.load_config(args.run)
    use_threads(args.threads, config)
    if config.task == "classify":
        if dynamic or cache:
            raise RnnlabError("--dynamic and --cache evaluate language models")
        return evaluate_classifier(args)
    lm = LanguageModel.load(args.run, device=args.device, weights=args.weights)
    use_quantization(lm, args.quantize)
    adaptive = dict(dynamic=dynamic, cache=cache, progress=reports.progress_bar) if (
        dynamic or cache) else {}
    if args.text:
        if adaptive:
            adaptive["data_dir"] = args.data_dir
        metrics = lm.evaluate_text(read_text(args.text), args.batch_size, **adaptive)
        what = args.text
    else:
        metrics = lm.evaluate(args.split, args.batch_size, args.data_dir, **adaptive,
                              **({"tune": True} if args.tune else {}))
        what = f"{args.split} split"
    if args.json:
        print(json.dumps({"run": str(args.run), "data": what, **metrics}))
        return 0
    print(reports.lm_eval_report(metrics, what, lm.vocab.level, lm.vocab.unk))
    return 0


def evaluate_classifier(args: argparse.Namespace) -> int:
    """Accuracy, loss, per-class precision/recall/F1, confusion matrix (and its PNG)."""
    if args.text:
        raise RnnlabError("--text scores language models; for a classifier give a labelled "
                          "file as --test when training, or use `rnnlab predict`")
    clf = TextClassifier.load(args.run, device=args.device, weights=args.weights)
    use_quantization(clf, args.quantize)
    report = clf.evaluate(args.split, args.data_dir)
    png = None
    try:
        png = plots.plot_confusion(report, Path(args.run) / f"confusion-{args.split}.png")
    except RnnlabError:
        pass  # matplotlib is optional
    if args.json:
        print(json.dumps({"run": str(args.run), "split": args.split, **report}))
        return 0
    print(reports.classifier_report(report, args.split))
    if png:
        print(f"wrote {png}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """One JSON line per input line: its log-probability, tokens, unknown tokens, perplexity."""
    lm = LanguageModel.load(args.run, device=args.device)
    use_threads(args.threads, lm.config)
    lines = (sys.stdin.read() if args.file == "-" else read_text(args.file)).splitlines()
    for line, result in zip(lines, lm.score(lines, label=args.label), strict=True):
        print(reports.score_line(line, result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    check_batch_size(args.batch_size)
    texts = list(args.texts)
    if args.file:
        texts += read_predict_file(args.file)
    if not texts:
        raise RnnlabError("nothing to classify: give texts as arguments or --file F")
    clf = TextClassifier.load(args.run, device=args.device)
    use_threads(args.threads, clf.config)
    for text, result in zip(texts, clf.predict(texts, args.batch_size), strict=True):
        print(reports.prediction_line(text, result))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    lm = LanguageModel.load(args.run, device=args.device)
    use_threads(args.threads, lm.config)
    use_quantization(lm, args.quantize)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   skip=[t for t in args.skip.split(",") if t], stop_at_eos=args.stop_at_eos,
                   seed=args.seed, skip_unknown=args.skip_unknown, **sample_cache_options(args))
    if lm.line_mode:
        return generate_lines(lm, args, options)
    if args.label is not None or args.novelty:
        raise RnnlabError("--label and --novelty need a run trained line by line (--lines)")
    if args.num_samples == 1:  # stream to the terminal as it is generated
        pieces = lm.stream(args.prime, args.tokens, **options)
        # The first piece checks the options and the prime: a bad one fails before anything is
        # printed, so that a script capturing stdout never takes the prime for a sample.
        first = next(pieces, "")
        sys.stdout.write(args.prime + (" " if args.prime and lm.vocab.level == "word" else ""))
        for piece in itertools.chain([first], pieces):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    texts = lm.generate(args.prime, args.tokens, num_samples=args.num_samples, **options)
    joiner = "" if lm.vocab.level == "char" else " "
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1}")
        print(args.prime + (joiner if args.prime else "") + text)
    return 0


def generate_lines(lm: LanguageModel, args: argparse.Namespace, options: dict[str, Any]) -> int:
    """A line model's samples, one per line, each starting with --prime; then, with
    --novelty, how many are training lines, held-out lines or new."""
    texts = lm.generate(args.prime, args.tokens, label=args.label,
                        num_samples=args.num_samples, **options)
    for text in texts:
        print(text)
    if args.novelty:
        print(reports.novelty_line(novelty(texts, known_lines(lm))))
    return 0
