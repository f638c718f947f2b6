"""The runs a server holds: each loaded once, named, and found by the request's ``model`` field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnlab import checkpoint as ckpt
from rnnlab.api import LanguageModel, TextClassifier
from rnnlab.errors import RnnlabError
from rnnlab.quantize import is_quantized, quantize
from rnnlab.serve.batching import Batcher


class NotFound(RnnlabError):
    """A request named a model the server does not hold (HTTP 404)."""


@dataclass
class Served:
    """One loaded run: a language model (with its decoding loop) or a classifier."""

    name: str
    task: str  # "lm" or "classify"
    lm: LanguageModel | None = None
    clf: TextClassifier | None = None
    batcher: Batcher | None = None

    @property
    def vocab(self):
        return self.lm.vocab if self.lm is not None else self.clf.vocab

    @property
    def model(self):
        return self.lm.model if self.lm is not None else self.clf.model

    def describe(self) -> dict[str, Any]:
        config = (self.lm or self.clf).config
        return {
            "name": self.name, "task": self.task, "level": self.vocab.level,
            "cell": config.model.cell, "layers": config.model.num_layers,
            "hidden_size": config.model.hidden_size, "vocab_size": len(self.vocab),
            "labels": self.clf.label_names if self.clf is not None else None,
            "line_mode": bool(self.lm is not None and self.lm.line_mode),
            "quantized": is_quantized(self.model),
        }


class Registry:
    """Named runs; a request picks one with ``model``, or gets the only one that fits."""

    def __init__(self, served: list[Served]):
        if not served:
            raise RnnlabError("give at least one run to serve")
        self.served = {s.name: s for s in served}

    @classmethod
    def load(cls, runs: list[str | Path], *, device: str = "cpu", weights: str = "best",
             quantization: str | None = None, max_batch: int = 64) -> Registry:
        served = []
        names: set[str] = set()
        for run in runs:
            name = _unique(Path(run).resolve().name or "run", names)
            names.add(name)
            served.append(load_run(run, name, device=device, weights=weights,
                                   quantization=quantization, max_batch=max_batch))
        return cls(served)

    def names(self) -> list[str]:
        return list(self.served)

    def pick(self, name: str | None, task: str, what: str) -> Served:
        """The run named ``name``, or the only run of ``task`` when no name is given."""
        if name is not None:
            if name not in self.served:
                raise NotFound(f"unknown model {name!r}; this server has "
                               f"{', '.join(self.served)}")
            found = self.served[name]
            if found.task != task:
                kind = "language model" if found.task == "lm" else "classifier"
                raise RnnlabError(f"model {name!r} is a {kind}; {what} needs a "
                                  f"{'language model' if task == 'lm' else 'classifier'}")
            return found
        fits = [s for s in self.served.values() if s.task == task]
        if len(fits) == 1:
            return fits[0]
        if not fits:
            kind = "language model" if task == "lm" else "classifier"
            raise RnnlabError(f"{what} needs a {kind} and this server holds none")
        raise RnnlabError(f"several models fit; name one with \"model\": "
                          f"{', '.join(s.name for s in fits)}")

    def close(self) -> None:
        for served in self.served.values():
            if served.batcher is not None:
                served.batcher.stop()


def load_run(run: str | Path, name: str, *, device: str = "cpu", weights: str = "best",
             quantization: str | None = None, max_batch: int = 64) -> Served:
    """Load one run directory as a served model (a language model gets a ``Batcher``)."""
    config = ckpt.load_config(run)
    if config.task == "classify":
        clf = TextClassifier.load(run, device=device, weights=weights)
        clf.model = quantize(clf.model, quantization)
        return Served(name, "classify", clf=clf)
    lm = LanguageModel.load(run, device=device, weights=weights)
    lm.model = quantize(lm.model, quantization)
    batcher = None if lm.line_mode else Batcher(lm.model, max_batch=max_batch)
    return Served(name, "lm", lm=lm, batcher=batcher)


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"
