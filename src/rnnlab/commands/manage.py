"""Around the runs: ``rnnlab serve``, ``export``, ``plot``, ``runs``, ``data`` and ``presets``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rnnlab import plots, tables
from rnnlab.cli_parser import data_overrides, set_overrides
from rnnlab.config_resolve import preset_names, preset_text, read_preset, resolve_config
from rnnlab.data.corpora import CORPORA, corpus_files, corpus_folder, data_dir, get_corpus
from rnnlab.errors import RnnlabError


def cmd_serve(args: argparse.Namespace) -> int:
    from rnnlab.serve.command import serve_command  # FastAPI is an optional extra

    return serve_command(args)


def cmd_export(args: argparse.Namespace) -> int:
    from rnnlab.export.onnx import export_run  # onnx is an optional extra

    out = export_run(args.run, args.out, fmt=args.format, weights=args.weights,
                     quantization=args.quantize)
    print(f"wrote {out / 'model.onnx'}, vocab.json and meta.json")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else "curves.png")
    print(f"wrote {plots.plot_runs(args.runs, out)}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    rows = tables.list_runs(args.folder)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(tables.format_runs(rows) if rows else f"no runs under {args.folder}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(tables.corpora_table(CORPORA, data_dir(args.data_dir)))
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

    flags = data_overrides(args, args.corpus or args.name)
    overrides = {**{k: v for k, v in flags.items() if v is not None}, **set_overrides(args.set)}
    config = resolve_config(preset=args.preset, config_file=args.config, overrides=overrides)
    prepared = prepared_data(config.data, force=True)
    if prepared is None:
        raise RnnlabError("only text files and file corpora are prepared; this source is "
                          "made in memory")
    print(tables.prepared_summary(prepared))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.keys:
        print(tables.config_keys())
        return 0
    if args.name:
        # The TOML file as written (comments kept), under a `preset` line: saved as a config
        # file, it resolves to this very recipe, which the default preset alone would not.
        print(f"# rnnlab preset {args.name}: save as FILE.toml, edit, then "
              f"`rnnlab train --config FILE.toml`\npreset = {json.dumps(args.name)}\n")
        print(preset_text(args.name), end="")
        return 0
    print(tables.presets_table({name: read_preset(name) for name in preset_names()}))
    return 0
