"""The ``rnnlab`` command line: its arguments, and the train flags as config overrides."""

from __future__ import annotations

import argparse
from typing import Any

from rnnlab import __version__
from rnnlab.errors import RnnlabError
from rnnlab.serve.limits import Limits

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
    source.add_argument("--lines", action="store_true",
                        help="language model: every non-empty line is one example, from a fresh "
                             "state (data.unit = line); labelled lines condition on the label")
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
    budget.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"],
                        help="autocast precision of training steps (default fp32; fp16 on CUDA "
                             "only, bf16 where the GPU or CPU has it natively, else fp32; auto: "
                             "bf16 where native, else fp32)")
    budget.add_argument("--out", help="run directory (default runs/<task>-<data>-<preset>-<time>)")
    budget.add_argument("--tensorboard", action="store_true",
                        help="also log scalars to RUN/tensorboard (needs the tensorboard package)")
    budget.add_argument("--no-plot", action="store_true",
                        help="do not draw RUN/curves.png at the end (drawn when matplotlib is "
                             "installed)")
    budget.add_argument("--resume", metavar="RUN", help="continue a run from its last checkpoint")
    budget.add_argument("--finetune", metavar="RUN",
                        help="a new run (--out) from RUN's best weights, averaging SGD's "
                             "iterates from the first step (Merity et al., 2017); RUN is only read")
    budget.add_argument("--samples", type=int, default=3,
                        help="samples printed after a language model trains (default 3)")

    evaluate = sub.add_parser("eval", help="measure a trained run on a split or a text file")
    evaluate.add_argument("run")
    evaluate.add_argument("--split", choices=["train", "valid", "test"],
                          help="default test (valid with --tune)")
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
    add_quantize_flag(evaluate)
    adaptive = evaluate.add_argument_group(
        "adaptive evaluation (the text read once as one stream; see README)")
    adaptive.add_argument("--dynamic", action="store_true",
                          help="dynamic evaluation: adapt the weights to the text as it is read "
                               "(Krause et al., 2018)")
    adaptive.add_argument("--cache", action="store_true",
                          help="mix in a neural cache of recent states (Grave et al., 2017)")
    adaptive.add_argument("--tune", action="store_true",
                          help="search the settings on the valid split and record them in "
                               "RUN/adaptive.json (later evaluations use them)")
    adaptive.add_argument("--dynamic-lr", type=float, metavar="LR")
    adaptive.add_argument("--decay", type=float, help="pull towards the trained weights, [0, 1]")
    adaptive.add_argument("--segment", type=int, help="tokens per dynamic update")
    add_cache_flags(adaptive)

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
    generate.add_argument("--label", help="a line model conditioned on labels: this label")
    generate.add_argument("--novelty", action="store_true",
                          help="a line model: count the samples found in train, in valid/test, "
                               "or new")
    generate.add_argument("--skip-unknown", action="store_true",
                          help="char level: drop prime characters outside the vocabulary")
    generate.add_argument("--cache", action="store_true",
                          help="mix a neural cache of the prompt and the text generated so far "
                               "into every step (Grave et al., 2017)")
    add_cache_flags(generate)
    add_quantize_flag(generate)
    generate.add_argument("--device", default="cpu")
    generate.add_argument("--threads", type=int,
                          help="intra-op CPU threads (default: the run's train.threads)")

    score = sub.add_parser("score", help="log-probability of every line of a file under a "
                                         "language model (one JSON line each)")
    score.add_argument("run")
    score.add_argument("--file", required=True, help="one text per line; - reads stdin")
    score.add_argument("--label", help="a line model conditioned on labels: score under this one")
    score.add_argument("--device", default="cpu")
    score.add_argument("--threads", type=int,
                       help="intra-op CPU threads (default: the run's train.threads)")

    predict = sub.add_parser("predict", help="label new texts with a trained classifier")
    predict.add_argument("run")
    predict.add_argument("texts", nargs="*", metavar="TEXT")
    predict.add_argument("--file", help="one text per line, or JSONL with a \"text\" field")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--threads", type=int,
                         help="intra-op CPU threads (default: the run's train.threads)")

    data = sub.add_parser("data", help="known corpora: list, download, path; prepare (map the "
                                       "token ids of any source, as train would read them)")
    data.add_argument("action", choices=["list", "download", "path", "prepare"])
    data.add_argument("name", nargs="?")
    data.add_argument("--data-dir")
    for flag, dest in (("--corpus", "corpus"), ("--train", "train_file"),
                       ("--valid", "valid_file"), ("--test", "test_file"), ("--text", "text"),
                       ("--preset", "preset"), ("--config", "config")):
        data.add_argument(flag, dest=dest, help="prepare: as for train")
    data.add_argument("--level", choices=["word", "char"])
    data.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    add_serve_parser(sub)
    export = sub.add_parser("export", help="write a run as an ONNX graph (needs rnnlab[export])")
    export.add_argument("run")
    export.add_argument("--format", default="onnx", choices=["onnx"])
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument("--weights", default="best", choices=["best", "last"])
    add_quantize_flag(export)

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


def add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve runs over HTTP: an API (/docs) and a web page")
    serve.add_argument("runs", nargs="+", metavar="RUN")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", help="require `Authorization: Bearer TOKEN` on /v1/")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--threads", type=int, help="intra-op CPU threads")
    serve.add_argument("--weights", default="best", choices=["best", "last"])
    add_quantize_flag(serve)
    serve.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    serve.add_argument("--max-input-tokens", type=int, default=Limits.max_input_tokens)
    serve.add_argument("--max-new-tokens", type=int, default=Limits.max_new_tokens)
    serve.add_argument("--max-concurrent", type=int, default=Limits.max_concurrent)
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])


def add_quantize_flag(parser: Any) -> None:
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: dynamic quantization of the recurrent and output layers "
                             "(CPU; see rnnlab.quantize)")


def add_cache_flags(parser: Any) -> None:
    parser.add_argument("--cache-window", type=int, metavar="N", help="states the cache holds")
    parser.add_argument("--cache-theta", type=float, metavar="THETA",
                        help="sharpness of the cache's attention")
    parser.add_argument("--cache-lambda", type=float, metavar="LAMBDA",
                        help="weight of the cache in the mixture, [0, 1]")


# --- train flags -------------------------------------------------------------------------------


def set_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as overrides (the value still a string, typed later)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RnnlabError(f"--set expects KEY=VALUE, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def data_overrides(args: argparse.Namespace, corpus: str | None) -> dict[str, Any]:
    """The data flags that ``train`` and ``data prepare`` share, as ``data.*`` overrides (a
    flag not given is None)."""
    return {"data.corpus": corpus, "data.train_path": args.train_file,
            "data.valid_path": args.valid_file, "data.test_path": args.test_file,
            "data.text_path": args.text, "data.level": args.level,
            "data.data_dir": args.data_dir}


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI's flags as ``section.key`` overrides (they win over presets and config files)."""
    values = set_overrides(args.set)
    flags = {
        "task": args.task, **data_overrides(args, args.corpus), "train.epochs": args.epochs,
        "train.max_steps": args.max_steps, "train.max_minutes": args.max_minutes,
        "train.seed": args.seed, "train.device": args.device, "train.threads": args.threads,
        "train.precision": args.precision, "train.init_from": args.init_from,
        "data.unit": "line" if args.lines else None,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    return values


# --- adaptive evaluation and cache flags -------------------------------------------------------


Adaptive = bool | dict[str, Any]  # off, on with the recorded or default settings, or some given


def adaptive_options(args: argparse.Namespace) -> tuple[Adaptive, Adaptive]:
    """``--dynamic`` and ``--cache`` with the settings given by flags: False, True or a dict."""
    dynamic = {"lr": args.dynamic_lr, "decay": args.decay, "segment": args.segment}
    cache = _cache_flags(args)
    if any(v is not None for v in dynamic.values()) and not args.dynamic:
        raise RnnlabError("--dynamic-lr, --decay and --segment set dynamic evaluation: "
                          "add --dynamic")
    if cache and not args.cache:
        raise RnnlabError("--cache-window, --cache-theta and --cache-lambda set the cache: "
                          "add --cache")
    if args.tune:
        if not (args.dynamic or args.cache):
            raise RnnlabError("--tune searches the settings of --dynamic or --cache: add one")
        if args.text:
            raise RnnlabError("--tune searches on the valid split only; it cannot score --text")
        if args.split not in (None, "valid"):
            raise RnnlabError(f"--tune searches on the valid split only, not {args.split}: tune, "
                              f"then evaluate --split {args.split} with the recorded settings")
    if (args.dynamic or args.cache) and args.batch_size not in (None, 1):
        raise RnnlabError("adaptive evaluation reads the text as one stream: drop --batch-size")
    given = {k: v for k, v in dynamic.items() if v is not None}
    return (given or True) if args.dynamic else False, (cache or True) if args.cache else False


def _cache_flags(args: argparse.Namespace) -> dict[str, Any]:
    cache = {"window": args.cache_window, "theta": args.cache_theta, "lam": args.cache_lambda}
    return {k: v for k, v in cache.items() if v is not None}


def sample_cache_options(args: argparse.Namespace) -> dict[str, Any]:
    """``generate --cache`` and its settings as ``SampleConfig`` fields."""
    given = _cache_flags(args)
    if given and not args.cache:
        raise RnnlabError("--cache-window, --cache-theta and --cache-lambda set the cache: "
                          "add --cache")
    return {"cache": True, **{f"cache_{k}": v for k, v in given.items()}} if args.cache else {}
