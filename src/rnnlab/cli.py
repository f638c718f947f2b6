"""The ``rnnlab`` command: parse arguments, call the library, print results.

Every user-facing failure becomes one line on stderr (``rnnlab: error: ...``) and a non-zero exit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab import distributed, fast, reports, runtime
from rnnlab.api import LanguageModel, TextClassifier
from rnnlab.cli_parser import (
    adaptive_options,
    build_parser,
    sample_cache_options,
    train_overrides,
)
from rnnlab.config import RunConfig
from rnnlab.config_resolve import (
    canonical_key,
    preset_names,
    preset_text,
    read_preset,
    resolve_config,
)
from rnnlab.data.corpora import CORPORA, corpus_files, corpus_folder, data_dir, get_corpus
from rnnlab.data.text import read_text
from rnnlab.errors import RnnlabError
from rnnlab.quantize import use_quantization
from rnnlab.training import runner
from rnnlab.training.callbacks import PlotCurves, PrintEvaluations, ProgressBar
from rnnlab.training.finetune import finetune_config
from rnnlab.training.trainer import Callback, TrainingInterrupted

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        return COMMANDS[args.command](args) or 0
    except RnnlabError as exc:
        print(f"rnnlab: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("rnnlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # disk full, permissions: the user's environment, not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"rnnlab: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless debugging
        if os.environ.get("RNNLAB_DEBUG"):
            raise
        print(f"rnnlab: internal error: {type(exc).__name__}: {exc} "
              "(set RNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rnnlab: warning: {message}", file=sys.stderr)


# --- train -------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    if fast.enabled():
        fast.keep_freed_memory()  # process-wide, so set here rather than by the library
    overrides = train_overrides(args)
    main = distributed.is_main()  # under torchrun, rank 0 alone prints
    bar = ProgressBar()
    callbacks = [bar] if bar.enabled else [PrintEvaluations()]
    if not args.no_plot:
        callbacks.append(PlotCurves())  # RUN/curves.png at the end, when matplotlib is installed
    if args.tensorboard:  # an optional dependency: imported only when asked for
        from rnnlab.training.tensorboard import TensorBoardLogger

        callbacks.append(TensorBoardLogger())  # fails here, before any work, without tensorboard
    try:
        if args.resume:
            allowed = resume_overrides(args, overrides)
            if args.max_minutes:
                callbacks.insert(0, BudgetNote(args.max_minutes))
            result = runner.resume(args.resume, allowed, callbacks=callbacks)
        elif args.finetune:
            if args.preset or args.config:
                raise RnnlabError("--finetune keeps the run's model and data: drop --preset and "
                                  "--config")
            config = finetune_config(args.finetune, overrides)
            if main:
                print(reports.run_header(config, args.out))
            result = runner.train(config, args.out, callbacks=callbacks)
        else:
            config = resolve_config(preset=args.preset, config_file=args.config,
                                    overrides=overrides)
            if main:
                print(reports.run_header(config, args.out))
            result = runner.train(config, args.out, callbacks=callbacks)
    except TrainingInterrupted as exc:
        if main:
            print(f"rnnlab: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint stands
        run = args.resume or args.out
        if main:
            state = None
            if run and (Path(run) / ckpt.TRAINER).exists():
                try:
                    state = ckpt.load_trainer_state(Path(run) / ckpt.TRAINER)
                except RnnlabError:  # unreadable: claim no step
                    state = None
            hint = ("" if not run else "; nothing was saved" if state is None else
                    f"; the last checkpoint (step {state.get('step')}) stands and nothing newer "
                    f"was saved; resume from it with: rnnlab train --resume {run}")
            print(f"rnnlab: interrupted at once{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not main:
        return 0
    print(reports.run_summary(result))
    report, lm = result.final
    if report is not None:
        print(reports.lm_report(report))
    if lm is not None:
        for line in reports.lm_samples(lm, args.samples):
            print(line)
    return 0


def resume_overrides(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides a resumed run accepts: its budget and other ``train.*`` options, but
    nothing that decides its data (the seed draws a classifier's train/valid split and the order
    of batches and windows), so that a resume trains on what the run trained on."""
    if args.out:
        raise RnnlabError(f"--out cannot be used with --resume; the run continues in "
                          f"{args.resume}")
    values = {canonical_key(k): v for k, v in overrides.items()}
    if args.finetune or "train.finetune_from" in values:
        raise RnnlabError("--finetune starts a new run; it cannot be used with --resume")
    if "train.init_from" in values:
        raise RnnlabError("--init-from starts a new run; a resumed run continues from "
                          "its own checkpoint")
    if "train.seed" in values:
        raise RnnlabError("--seed cannot be used with --resume: the seed decides the data split "
                          "and the order of batches and windows, which a resumed run keeps")
    if any(not k.startswith("train.") for k in values) or args.preset or args.config:
        raise RnnlabError("--resume continues a run as configured; only budget and "
                          "train.* options may change")
    return values


class BudgetNote(Callback):
    """Says, once a resumed run has loaded its checkpoint, how much of the ``--max-minutes``
    budget is left: it counts the run's whole training time, not extra time."""

    def __init__(self, minutes: float):
        self.minutes = minutes

    def on_train_start(self, trainer: Any) -> None:
        print(reports.budget_line(self.minutes, trainer.elapsed / 60), flush=True)


# --- eval / generate ---------------------------------------------------------------------------


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
        png = reports.plot_confusion(report, Path(args.run) / f"confusion-{args.split}.png")
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
    for line, result in zip(lines, lm.score(lines), strict=True):
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
        line = {"text": text, **result}  # a text without tokens keeps its "error" field
        if result["probs"] is not None:
            line["probs"] = {name: round(float(p), 6) for name, p in result["probs"].items()}
        print(json.dumps(line, ensure_ascii=False))
    return 0


def read_predict_file(path: str) -> list[str]:
    """One text per line, or JSON lines with a "text" field (a .jsonl file)."""
    lines = [line for line in read_text(path).splitlines() if line.strip()]
    if not path.endswith((".jsonl", ".ndjson")):
        return lines
    texts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise RnnlabError(f"{path}:{number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise RnnlabError(f"{path}:{number} has no \"text\" field")
        texts.append(record["text"])
    return texts


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
        from rnnlab.lines.inference import known_lines, novelty

        print(reports.novelty_line(novelty(texts, known_lines(lm))))
    return 0


# --- serve / export ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from rnnlab.serve.command import serve_command  # FastAPI is an optional extra

    return serve_command(args)


def cmd_export(args: argparse.Namespace) -> int:
    from rnnlab.export.onnx import export_run

    out = export_run(args.run, args.out, fmt=args.format, weights=args.weights,
                     quantization=args.quantize)
    print(f"wrote {out / 'model.onnx'}, vocab.json and meta.json")
    return 0


# --- plot / runs -------------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace) -> int:
    out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else "curves.png")
    print(f"wrote {reports.plot_runs(args.runs, out)}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    rows = reports.list_runs(args.folder)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(reports.format_runs(rows) if rows else f"no runs under {args.folder}")
    return 0


# --- data / presets ----------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(reports.corpora_table(CORPORA, data_dir(args.data_dir)))
        return 0
    if args.action == "prepare":
        return _data_prepare(args)
    if not args.name:
        raise RnnlabError(f"`rnnlab data {args.action}` needs a corpus name")
    get_corpus(args.name)
    if args.action == "path":
        folder = corpus_folder(args.name, args.data_dir)
        print(folder if folder is not None else "(built-in, no files)")
        return 0
    checks = {f.split: "sha256 verified" if f.sha256 else "checked in its archive"
              for f in get_corpus(args.name).files}
    for split, path in corpus_files(args.name, args.data_dir, verify=True).items():
        print(f"{split}: {path} ({checks[split]})")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    """Prepare the token ids that ``train`` with the same data flags would map, and say where."""
    from rnnlab.lm.data import prepared_data

    overrides = {key: value for key, value in {
        "data.corpus": args.corpus or args.name, "data.train": args.train_file,
        "data.valid": args.valid_file, "data.test": args.test_file, "data.text": args.text,
        "data.level": args.level, "data.data_dir": args.data_dir}.items() if value is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise RnnlabError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    config = resolve_config(preset=args.preset, config_file=args.config, overrides=overrides)
    prepared = prepared_data(config.data, force=True)
    if prepared is None:
        raise RnnlabError("only text files and file corpora are prepared; this source is "
                          "made in memory")
    print(reports.prepared_summary(prepared))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.keys:
        print(reports.config_keys())
        return 0
    if args.name:
        # The TOML file as written (comments kept), under a `preset` line: saved as a config
        # file, it resolves to this very recipe, which the default preset alone would not.
        print(f"# rnnlab preset {args.name}: save as FILE.toml, edit, then "
              f"`rnnlab train --config FILE.toml`\npreset = {json.dumps(args.name)}\n")
        print(preset_text(args.name), end="")
        return 0
    print(reports.presets_table({name: read_preset(name) for name in preset_names()}))
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "predict": cmd_predict,
    "score": cmd_score,
    "serve": cmd_serve,
    "export": cmd_export,
    "data": cmd_data,
    "plot": cmd_plot,
    "runs": cmd_runs,
    "presets": cmd_presets,
}


if __name__ == "__main__":
    sys.exit(main())
