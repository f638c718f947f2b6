"""``rnnlab export RUN --format onnx``: a run as an ONNX graph, to run without PyTorch.

A language model becomes its one-step decoder, ``(token, state) -> (log-probs, state)``, which a
sampling loop in any language calls once per token (README: "Generation from ONNX"); a
classifier becomes the whole classifier, ``(tokens, lengths) -> probabilities``. Beside
``model.onnx`` go ``vocab.json`` (the run's) and ``meta.json`` (the graph's inputs, outputs and
what they mean). Needs the export extra: ``pip install 'rnnlab[export]'`` (onnx, onnxruntime).

The graph is traced by PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no
further package and handles ``nn.LSTM``/``nn.GRU``/``nn.RNN`` as the ONNX recurrent operators.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnlab import checkpoint as ckpt
from rnnlab import fast
from rnnlab.api import LanguageModel, TextClassifier
from rnnlab.atomic import atomic_write_text
from rnnlab.data.vocab import EOS
from rnnlab.errors import RnnlabError

OPSET = 17
FORMATS = ("onnx",)


class OneStep(nn.Module):
    """A language model's step: token (B,) int64 and state (layers, B, H) -> (B, V) log-probs.

    The state is ``h`` (and ``c`` for an LSTM) as separate inputs and outputs: ONNX has no
    tuples.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.lstm = model.config.cell == "lstm"

    def forward(self, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None):
        state = (h, c) if self.lstm else h
        logits, state = self.model(token[:, None], state)  # (B, 1, V)
        log_probs = logits[:, 0].float().log_softmax(dim=-1)  # (B, V)
        return (log_probs, *state) if self.lstm else (log_probs, state)


class Probabilities(nn.Module):
    """A classifier: tokens (B, T) int64 (0 pads) and lengths (B,) int64 -> (B, C) probs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, lengths).float().softmax(dim=-1)


def export_run(run: str | Path, out: str | Path, *, fmt: str = "onnx", weights: str = "best",
               quantization: str | None = None) -> Path:
    """Write ``out/model.onnx``, ``out/vocab.json`` and ``out/meta.json``; returns ``out``."""
    if fmt not in FORMATS:
        raise RnnlabError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantization not in (None, "none"):
        raise RnnlabError("an int8 model cannot be exported to ONNX: PyTorch's exporter has no "
                          "ONNX form of its dynamically quantized LSTM/GRU; export the float "
                          "model and quantize it with onnxruntime.quantization instead")
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError:
        raise RnnlabError("ONNX export needs onnx: pip install 'rnnlab[export]'") from None
    config = ckpt.load_config(run)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RnnlabError(f"{out} exists and is not a directory")
    if (out / "model.onnx").exists():
        raise RnnlabError(f"{out / 'model.onnx'} already exists; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if config.task == "classify":
        clf = TextClassifier.load(run, weights=weights)
        meta = _export_classifier(clf, out / "model.onnx")
        ckpt.save_artifacts(out, clf.vocab, clf.label_names)
    else:
        lm = LanguageModel.load(run, weights=weights)
        if lm.line_mode:
            raise RnnlabError("ONNX export covers stream language models and classifiers; "
                              "this run reads lines")
        meta = _export_lm(lm, out / "model.onnx")
        ckpt.save_artifacts(out, lm.vocab)
    meta["run"] = str(run)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return out


def _export_lm(lm: LanguageModel, path: Path) -> dict[str, Any]:
    model_config = lm.config.model
    step = OneStep(lm.model).eval()
    lstm = step.lstm
    shape = (model_config.num_layers, 1, model_config.hidden_size)
    args = (torch.zeros(1, dtype=torch.long), torch.zeros(shape), *(
        [torch.zeros(shape)] if lstm else []))
    inputs = ["token", "h", *(["c"] if lstm else [])]
    outputs = ["log_probs", "h_out", *(["c_out"] if lstm else [])]
    axes = {"token": {0: "batch"}, "log_probs": {0: "batch"}}
    axes.update({name: {1: "batch"} for name in inputs[1:] + outputs[1:]})
    _export(step, args, path, inputs, outputs, axes)
    return {
        "task": "lm", "graph": "one step", "level": lm.vocab.level, "cell": model_config.cell,
        "layers": model_config.num_layers, "hidden_size": model_config.hidden_size,
        "vocab_size": len(lm.vocab), "eos": lm.vocab.stoi.get(EOS), "inputs": {
            "token": "(B,) int64 ids", "h": "(layers, B, hidden) float32, zeros to start",
            **({"c": "(layers, B, hidden) float32, zeros to start"} if lstm else {})},
        "outputs": {"log_probs": "(B, V) float32 log-probabilities of the next token",
                    "h_out": "the state after the token", **({"c_out": "the cell state"}
                                                              if lstm else {})},
    }


def _export_classifier(clf: TextClassifier, path: Path) -> dict[str, Any]:
    model = clf.model
    # One direction: the dense path, plain tensor operations. Both directions: the packed
    # path, which the exporter writes as the ONNX operators with per-row lengths.
    model.path = "packed" if model.directions == 2 else "dense"
    wrapper = Probabilities(model).eval()
    args = (torch.ones(2, 5, dtype=torch.long), torch.tensor([5, 3]))
    axes = {"tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
            "probs": {0: "batch"}}
    _export(wrapper, args, path, ["tokens", "lengths"], ["probs"], axes)
    return {
        "task": "classify", "graph": "whole classifier", "level": clf.vocab.level,
        "labels": clf.label_names, "max_length": clf.config.data.max_length,
        "tokenizer": "rnnlab.data.text.classifier_tokens; ids from vocab.json, unknown -> "
                     "<unk>; pad with 0",
        "inputs": {"tokens": "(B, T) int64 ids, 0 pads", "lengths": "(B,) int64, >= 1"},
        "outputs": {"probs": "(B, C) float32 label probabilities, in the order of labels"},
    }


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    # The plain PyTorch path: the fast paths are CPU-speed tricks with no place in a graph.
    with fast.enabled_as(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python-side checks of the inputs
        try:
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        except Exception as exc:  # noqa: BLE001 - whatever the exporter refuses, in one line
            path.unlink(missing_ok=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RnnlabError(f"ONNX export failed: {type(exc).__name__}: {first}") from None
