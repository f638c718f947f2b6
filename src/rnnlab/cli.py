"""The ``rnnlab`` command: parse arguments, call the library, print results.

Every user-facing failure becomes one line on stderr (``rnnlab: error: ...``) and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnlab import __version__
from rnnlab.errors import RnnlabError

if TYPE_CHECKING:
    from rnnlab.config import RunConfig

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        return args.func(args) or 0
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


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnlab", description="Train, evaluate and sample recurrent networks for text.")
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (no arguments: the built-in synthetic "
                                         "corpus, offline, ~2 minutes)")
    source = train.add_argument_group("data")
    source.add_argument("--task", choices=["lm", "classify"], help="default: lm")
    source.add_argument("--corpus", help="a known corpus: see `rnnlab data list`")
    source.add_argument("--train", dest="train_file", metavar="FILE")
    source.add_argument("--valid", dest="valid_file", metavar="FILE")
    source.add_argument("--test", dest="test_file", metavar="FILE")
    source.add_argument("--text", metavar="FILE", help="one file split into train/valid(/test)")
    source.add_argument("--level", choices=["word", "char"])
    source.add_argument("--data-dir", help="where known corpora live (default $RNNLAB_DATA or "
                                           "~/.cache/rnnlab)")
    recipe = train.add_argument_group("recipe")
    recipe.add_argument("--preset", help="a named recipe: see `rnnlab presets`")
    recipe.add_argument("--config", metavar="FILE.toml")
    recipe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-3 (repeatable)")
    recipe.add_argument("--init-from", metavar="RUN",
                        help="start from a finished run's embeddings (matched by word) and "
                             "same-shaped recurrent weights, e.g. a language model")
    budget = train.add_argument_group("budget and run")
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--max-steps", type=int)
    budget.add_argument("--max-minutes", type=float,
                        help="training-time budget in minutes; with --resume, the run's budget in "
                             "total (minutes already trained count), not extra time")
    budget.add_argument("--seed", type=int)
    budget.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    budget.add_argument("--threads", type=int)
    budget.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                        help="autocast precision of training steps (default fp32; fp16 on CUDA "
                             "only, bf16 where the GPU or CPU has it natively, else fp32)")
    budget.add_argument("--out", help="run directory (default runs/<task>-<data>-<preset>-<time>)")
    budget.add_argument("--tensorboard", action="store_true",
                        help="also log scalars to RUN/tensorboard (needs the tensorboard package)")
    budget.add_argument("--no-plot", action="store_true",
                        help="do not draw RUN/curves.png at the end (drawn when matplotlib is "
                             "installed)")
    budget.add_argument("--resume", metavar="RUN", help="continue a run from its last checkpoint")
    budget.add_argument("--samples", type=int, default=3,
                        help="samples printed after a language model trains (default 3)")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="measure a trained run on a split or a text file")
    evaluate.add_argument("run")
    evaluate.add_argument("--split", default="test", choices=["train", "valid", "test"])
    evaluate.add_argument("--text", metavar="FILE", help="score this file instead of a split")
    evaluate.add_argument("--batch-size", type=int,
                          help="rows of the stream read in parallel, each from an empty state "
                               "(a split: default data.eval_batch_size; --text: default 1, the "
                               "whole file as one stream)")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--weights", default="best", choices=["best", "last"])
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--threads", type=int,
                          help="intra-op CPU threads (default: the run's train.threads)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=cmd_eval)

    generate = sub.add_parser("generate", help="sample text from a language model")
    generate.add_argument("run")
    generate.add_argument("--prime", default="", help="text to start from")
    generate.add_argument("--tokens", "--chars", dest="tokens", type=int, default=100,
                          help="how many tokens (words, or characters at char level)")
    generate.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--skip", default="", help="comma-separated tokens never to emit")
    generate.add_argument("--stop-at-eos", action="store_true")
    generate.add_argument("--num-samples", type=int, default=1)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--skip-unknown", action="store_true",
                          help="char level: drop prime characters outside the vocabulary")
    generate.add_argument("--device", default="cpu")
    generate.add_argument("--threads", type=int,
                          help="intra-op CPU threads (default: the run's train.threads)")
    generate.set_defaults(func=cmd_generate)

    predict = sub.add_parser("predict", help="label new texts with a trained classifier")
    predict.add_argument("run")
    predict.add_argument("texts", nargs="*", metavar="TEXT")
    predict.add_argument("--file", help="one text per line, or JSONL with a \"text\" field")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--threads", type=int,
                         help="intra-op CPU threads (default: the run's train.threads)")
    predict.set_defaults(func=cmd_predict)

    data = sub.add_parser("data", help="known corpora: list, download, path")
    data.add_argument("action", choices=["list", "download", "path"])
    data.add_argument("name", nargs="?")
    data.add_argument("--data-dir")
    data.set_defaults(func=cmd_data)

    plot = sub.add_parser("plot", help="draw learning curves of one or more runs into a PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN")
    plot.add_argument("--out", help="PNG path (default: RUN/curves.png for one run, else "
                                    "curves.png)")
    plot.set_defaults(func=cmd_plot)

    runs = sub.add_parser("runs", help="list the runs under a folder")
    runs.add_argument("folder", nargs="?", default="runs")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    presets = sub.add_parser("presets", help="list the named recipes")
    presets.add_argument("name", nargs="?", help="print one preset as a TOML config file")
    presets.add_argument("--keys", action="store_true",
                         help="list every config key with its type and default")
    presets.set_defaults(func=cmd_presets)
    return parser


# --- train -------------------------------------------------------------------------------------


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI's flags as ``section.key`` overrides (they win over presets and config files)."""
    values: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RnnlabError(f"--set expects KEY=VALUE, got {item!r}")
        values[key.strip()] = value.strip()
    flags = {
        "task": args.task, "data.corpus": args.corpus, "data.train": args.train_file,
        "data.valid": args.valid_file, "data.test": args.test_file, "data.text": args.text,
        "data.level": args.level, "data.data_dir": args.data_dir, "train.epochs": args.epochs,
        "train.max_steps": args.max_steps, "train.max_minutes": args.max_minutes,
        "train.seed": args.seed, "train.device": args.device, "train.threads": args.threads,
        "train.precision": args.precision, "train.init_from": args.init_from,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from rnnlab import distributed
    from rnnlab.config import resolve_config
    from rnnlab.training import runner
    from rnnlab.training.callbacks import PlotCurves, PrintEvaluations, ProgressBar
    from rnnlab.training.trainer import TrainingInterrupted

    overrides = train_overrides(args)
    main = distributed.is_main()  # under torchrun, rank 0 alone prints
    bar = ProgressBar()
    callbacks = [bar] if bar.enabled else [PrintEvaluations()]
    if not args.no_plot:
        callbacks.append(PlotCurves())  # RUN/curves.png at the end, when matplotlib is installed
    if args.tensorboard:
        from rnnlab.training.tensorboard import TensorBoardLogger

        callbacks.append(TensorBoardLogger())  # fails here, before any work, without tensorboard
    try:
        if args.resume:
            allowed = resume_overrides(args, overrides)
            if args.max_minutes:
                callbacks.insert(0, budget_note(args.max_minutes))
            result = runner.resume(args.resume, allowed, callbacks=callbacks)
        else:
            config = resolve_config(preset=args.preset, config_file=args.config,
                                    overrides=overrides)
            if main:
                print(f"run: {args.out or '(default)'} | task {config.task} | preset "
                      f"{config.preset} | data "
                      f"{config.data.corpus or config.data.text or config.data.train}")
            result = runner.train(config, args.out, callbacks=callbacks)
    except TrainingInterrupted as exc:
        if main:
            print(f"rnnlab: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint stands
        run = args.resume or args.out
        if main:
            from rnnlab import checkpoint as ckpt

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
    print(f"run directory: {result.run_dir}")
    print(f"stopped: {result.stop_reason} after {result.steps} steps, "
          f"{result.elapsed:.1f} s of training")
    from rnnlab import checkpoint as ckpt

    if ckpt.load_config(result.run_dir).task == "lm":
        report_language_model(result.run_dir, args.samples)
    return 0


def resume_overrides(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides a resumed run accepts: its budget and other ``train.*`` options, but
    nothing that decides its data (the seed draws a classifier's train/valid split and the order
    of batches and windows), so that a resume trains on what the run trained on."""
    from rnnlab.config import canonical_key

    if args.out:
        raise RnnlabError(f"--out cannot be used with --resume; the run continues in "
                          f"{args.resume}")
    values = {canonical_key(k): v for k, v in overrides.items()}
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


def budget_note(minutes: float) -> Any:
    """A callback that says, once a resumed run has loaded its checkpoint, how much of the
    ``--max-minutes`` budget is left: it counts the run's whole training time, not extra time."""
    from rnnlab.training.trainer import Callback

    class BudgetNote(Callback):
        def on_train_start(self, trainer: Any) -> None:
            used = trainer.elapsed / 60
            print(f"budget: {minutes:g} minutes in total, {used:.1f} already used, "
                  f"{max(minutes - used, 0):.1f} left", flush=True)

    return BudgetNote()


def report_language_model(run_dir: Path, samples: int) -> None:
    """Best valid perplexity beside the baselines, test perplexity, and a few samples."""
    import math

    from rnnlab.api import LanguageModel
    from rnnlab.data.lm_data import load_lm_data
    from rnnlab.training.metrics import unigram_nll

    lm = LanguageModel.load(run_dir)
    data = load_lm_data(lm.config.data, lm.vocab)
    valid = lm.evaluate_ids(data.splits["valid"])
    unigram = math.exp(unigram_nll(data.splits["train"], data.splits["valid"], len(lm.vocab)))
    line = f"valid ppl {valid['ppl']:.2f} (best checkpoint) | unigram baseline {unigram:.2f}"
    if data.synthetic is not None:
        true_ppl = math.exp(data.synthetic.true_nll("valid"))
        rate = math.exp(data.synthetic.language.entropy_rate())
        line += (f" | true source ppl {true_ppl:.2f} on valid (entropy rate: {rate:.2f}) | "
                 f"model / true = {valid['ppl'] / true_ppl:.3f}")
    print(line)
    if "test" in data.splits:
        test = lm.evaluate_ids(data.splits["test"])
        print(f"test ppl {test['ppl']:.2f} | {test['bits']:.4f} bits per token")
    if samples > 0:
        prime = "" if lm.vocab.level == "word" else ("\n" if "\n" in lm.vocab else lm.vocab.itos[1])
        for i, text in enumerate(lm.generate(prime, 30 if lm.vocab.level == "word" else 200,
                                             num_samples=samples, temperature=0.8, seed=1,
                                             skip=[lm.vocab.unk] if lm.vocab.unk else [])):
            print(f"sample {i + 1}: {text.strip()}")


# --- eval / generate ---------------------------------------------------------------------------


def use_threads(requested: int | None, config: RunConfig) -> None:
    """``--threads``, else the run's own ``train.threads``: what it was tuned with, so that a
    run made for one thread (e.g. imdb-bilstm) does not evaluate on an oversubscribed CPU."""
    if requested is not None and requested < 0:
        raise RnnlabError(f"--threads must be 0 (PyTorch's default) or more, got {requested}")
    from rnnlab.runtime import set_threads

    set_threads(config.train.threads if requested is None else requested)


def check_batch_size(batch_size: int | None) -> None:
    """``--batch-size``: absent (the run's own) or positive; 0 and below are mistakes."""
    if batch_size is not None and batch_size <= 0:
        raise RnnlabError(f"--batch-size must be positive, got {batch_size}")


def cmd_eval(args: argparse.Namespace) -> int:
    from rnnlab import checkpoint as ckpt

    check_batch_size(args.batch_size)
    config = ckpt.load_config(args.run)
    use_threads(args.threads, config)
    if config.task == "classify":
        return evaluate_classifier(args)
    from rnnlab.api import LanguageModel
    from rnnlab.data.text import read_text

    lm = LanguageModel.load(args.run, device=args.device, weights=args.weights)
    if args.text:
        metrics = lm.evaluate_text(read_text(args.text), args.batch_size)
        what = args.text
    else:
        metrics = lm.evaluate(args.split, args.batch_size, args.data_dir)
        what = f"{args.split} split"
    if args.json:
        print(json.dumps({"run": str(args.run), "data": what, **metrics}))
        return 0
    unit = "character" if lm.vocab.level == "char" else "token"
    print(f"{what}: {metrics['tokens']:,} target {unit}s, batch size {metrics['batch_size']}")
    print(f"loss {metrics['loss']:.4f} nats/{unit} | ppl {metrics['ppl']:.2f} | "
          f"{metrics['bits']:.4f} bits/{unit}")
    if "unknown" in metrics:
        print(f"unknown {unit}s mapped to {lm.vocab.unk}: {metrics['unknown']:,}")
    return 0


def evaluate_classifier(args: argparse.Namespace) -> int:
    """Accuracy, loss, per-class precision/recall/F1, confusion matrix (and its PNG)."""
    from rnnlab.api import TextClassifier
    from rnnlab.reports import plot_confusion

    if args.text:
        raise RnnlabError("--text scores language models; for a classifier give a labelled "
                          "file as --test when training, or use `rnnlab predict`")
    clf = TextClassifier.load(args.run, device=args.device, weights=args.weights)
    report = clf.evaluate(args.split, args.data_dir)
    png = None
    try:
        png = plot_confusion(report, Path(args.run) / f"confusion-{args.split}.png")
    except RnnlabError:
        pass  # matplotlib is optional
    if args.json:
        print(json.dumps({"run": str(args.run), "split": args.split, **report}))
        return 0
    print(f"{args.split} split: {report['examples']:,} examples | accuracy "
          f"{report['accuracy']:.4f} | loss {report['loss']:.4f} | "
          f"macro F1 {report['macro_f1']:.4f}")
    width = max(len(n) for n in report["labels"]) + 2
    print(f"{'class':{width}} precision  recall     f1  support")
    for name in report["labels"]:
        row = report["per_class"][name]
        print(f"{name:{width}} {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:6.4f} "
              f"{row['support']:8d}")
    print("confusion matrix (rows = true, columns = predicted):")
    print(" " * width + " ".join(f"{n:>8}" for n in report["labels"]))
    for name, row in zip(report["labels"], report["confusion"], strict=True):
        print(f"{name:{width}}" + " ".join(f"{v:8d}" for v in row))
    if png:
        print(f"wrote {png}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from rnnlab.api import TextClassifier

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
    from rnnlab.data.text import read_text

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
    import itertools

    from rnnlab.api import LanguageModel

    lm = LanguageModel.load(args.run, device=args.device)
    use_threads(args.threads, lm.config)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   skip=[t for t in args.skip.split(",") if t], stop_at_eos=args.stop_at_eos,
                   seed=args.seed, skip_unknown=args.skip_unknown)
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


# --- plot / runs -------------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace) -> int:
    from rnnlab.reports import plot_runs

    out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else "curves.png")
    print(f"wrote {plot_runs(args.runs, out)}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from rnnlab.reports import format_runs, list_runs

    rows = list_runs(args.folder)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_runs(rows) if rows else f"no runs under {args.folder}")
    return 0


# --- data / presets ----------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    from rnnlab.data.corpora import CORPORA, corpus_files, corpus_folder, data_dir, get_corpus

    if args.action == "list":
        root = data_dir(args.data_dir)
        for name, corpus in sorted(CORPORA.items()):
            present = all((root / f.path).exists() for f in corpus.files)
            state = "built-in" if not corpus.files else ("present" if present else "not downloaded")
            print(f"{name:16} {corpus.task:9} {state:15} {corpus.description}")
        print(f"data directory: {root}")
        return 0
    if not args.name:
        raise RnnlabError(f"`rnnlab data {args.action}` needs a corpus name")
    get_corpus(args.name)
    if args.action == "path":
        folder = corpus_folder(args.name, args.data_dir)
        print(folder if folder is not None else "(built-in, no files)")
        return 0
    for split, path in corpus_files(args.name, args.data_dir, verify=True).items():
        print(f"{split}: {path} (sha256 verified)")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from rnnlab.config import preset_names, preset_text, read_preset

    if args.keys:
        print_config_keys()
        return 0
    if args.name:
        # The TOML file as written (comments kept), under a `preset` line: saved as a config
        # file, it resolves to this very recipe, which the default preset alone would not.
        print(f"# rnnlab preset {args.name}: save as FILE.toml, edit, then "
              f"`rnnlab train --config FILE.toml`\npreset = {json.dumps(args.name)}\n")
        print(preset_text(args.name), end="")
        return 0
    for name in preset_names():
        raw = read_preset(name)
        print(f"{name:14} {raw.get('task', 'lm'):9} {raw.get('description', '')}")
    return 0



def print_config_keys() -> None:
    """Every key that ``--set``, config files and presets accept, with its type and default."""
    import dataclasses
    import typing

    from rnnlab.config import SECTIONS, RunConfig

    defaults = RunConfig()
    rows = [("task", "str", defaults.task), ("preset", "str | None", None)]
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            kind = str(hint) if typing.get_args(hint) else hint.__name__  # list[int], str
            rows.append((f"{section}.{f.name}", kind,
                         getattr(getattr(defaults, section), f.name)))
    for key, kind, value in rows:
        shown = "none" if value is None else json.dumps(value)
        print(f"{key:26} {kind:14} {shown}")


if __name__ == "__main__":
    sys.exit(main())
