"""The ``rnnlab`` command line: its arguments, and the train flags as config overrides."""

from __future__ import annotations

import argparse
from typing import Any

from rnnlab import __version__
from rnnlab.errors import RnnlabError

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

    predict = sub.add_parser("predict", help="label new texts with a trained classifier")
    predict.add_argument("run")
    predict.add_argument("texts", nargs="*", metavar="TEXT")
    predict.add_argument("--file", help="one text per line, or JSONL with a \"text\" field")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--threads", type=int,
                         help="intra-op CPU threads (default: the run's train.threads)")

    data = sub.add_parser("data", help="known corpora: list, download, path")
    data.add_argument("action", choices=["list", "download", "path"])
    data.add_argument("name", nargs="?")
    data.add_argument("--data-dir")

    plot = sub.add_parser("plot", help="draw learning curves of one or more runs into a PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN")
    plot.add_argument("--out", help="PNG path (default: RUN/curves.png for one run, else "
                                    "curves.png)")

    runs = sub.add_parser("runs", help="list the runs under a folder")
    runs.add_argument("folder", nargs="?", default="runs")
    runs.add_argument("--json", action="store_true")

    presets = sub.add_parser("presets", help="list the named recipes")
    presets.add_argument("name", nargs="?", help="print one preset as a TOML config file")
    presets.add_argument("--keys", action="store_true",
                         help="list every config key with its type and default")
    return parser


# --- train flags -------------------------------------------------------------------------------


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
