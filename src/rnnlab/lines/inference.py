"""A trained line model at work: sampling whole lines (optionally for a label), measuring
lines, and telling how many samples are copies of the training data (novelty).

These functions take a loaded :class:`rnnlab.lm.inference.LanguageModel` whose run reads lines
(``config.data.unit == "line"``); its methods call them. No training code is imported here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any

import torch

from rnnlab.errors import RnnlabError
from rnnlab.generation import SampleConfig, generate_ids
from rnnlab.lines.data import (
    BOS,
    EOL,
    LineSet,
    encode_lines,
    line_tokens,
    load_line_data,
    normalise,
)
from rnnlab.lines.task import evaluate_lines, line_nll

if TYPE_CHECKING:
    from rnnlab.lm.inference import LanguageModel


def label_id(lm: LanguageModel, label: str | None) -> int | None:
    """The class id of ``label`` for a conditioned model; one-line errors otherwise."""
    names = lm.label_names
    if names is None:
        if label is not None:
            raise RnnlabError(f"this run was not trained on labelled lines; drop the label "
                              f"{label!r}")
        return None
    if label is None:
        raise RnnlabError(f"this model is conditioned on a label: give one of {', '.join(names)}")
    if label not in names:
        raise RnnlabError(f"unknown label {label!r}; known labels: {', '.join(names)}")
    return names.index(label)


def _initial_state(lm: LanguageModel, label: str | None, rows: int = 1) -> Any:
    index = label_id(lm, label)
    device = next(lm.model.parameters()).device
    labels = None if index is None else torch.full((rows,), index, dtype=torch.long)
    return lm.model.initial_state(labels, rows, device)


def _prompt(lm: LanguageModel, prime: str, config: SampleConfig) -> list[int]:
    """``<s>`` and the prime's tokens; unknown characters are an error unless skipped."""
    vocab = lm.vocab
    tokens = line_tokens(prime, vocab.level)
    unknown = [t for t in tokens if t not in vocab]
    if unknown and vocab.level == "char" and not config.skip_unknown:
        raise RnnlabError(f"prime characters not in the vocabulary: {''.join(unknown)!r} "
                          "(use --skip-unknown to drop them)")
    if unknown and vocab.level == "char":
        tokens = [t for t in tokens if t in vocab]
    elif unknown:
        warnings.warn(f"prime words not in the vocabulary, read as {vocab.unk}: "
                      + ", ".join(unknown[:10]), stacklevel=3)
    return [vocab.stoi[BOS], *vocab.encode(tokens)]


def generate_lines(lm: LanguageModel, prime: str = "", max_tokens: int = 100,
                   label: str | None = None, **options: Any) -> list[str]:
    """``num_samples`` lines, each from ``<s>`` (and the required prefix ``prime``) to ``</s>``
    or ``max_tokens`` new tokens, decoded as one batch; ``label`` for a conditioned model."""
    options.pop("stop_at_eos", None)  # a line always ends at its end symbol
    config = SampleConfig(max_tokens=max_tokens, stop_at_eos=True, **options).validate()
    vocab = lm.vocab
    prompt = _prompt(lm, prime, config)
    # <s> only ever starts a line: it is never a target, so never a sample either
    banned = [vocab.stoi[BOS], *(vocab.stoi[t] for t in config.skip if t in vocab)]
    eol = vocab.stoi[EOL]
    state = _initial_state(lm, label)
    steps = list(generate_ids(lm.model, prompt, config, banned, eol, state=state))
    rows = torch.stack(steps, dim=1).tolist()  # (N, T)
    head = normalise(prime, vocab.level)
    joiner = "" if vocab.level == "char" or not head else " "
    texts = []
    for row in rows:
        row = row[: row.index(eol)] if eol in row else row
        tail = vocab.join(vocab.decode(row))
        texts.append(head + (joiner if tail else "") + tail)
    return texts


def novelty(samples: list[str], known: dict[str, set[str]]) -> dict[str, int]:
    """How many ``samples`` are training lines, are valid/test lines (and not training ones),
    or are new: the three counts makemore reports."""
    train = known.get("train", set())
    held_out = set().union(*(v for k, v in known.items() if k != "train"))
    counts = {"train": 0, "valid/test": 0, "new": 0}
    for sample in samples:
        where = "train" if sample in train else "valid/test" if sample in held_out else "new"
        counts[where] += 1
    return counts


def known_lines(lm: LanguageModel, data_dir: str | None = None) -> dict[str, set[str]]:
    """The run's lines per split, re-read from its recorded source, split and seed."""
    if lm.known is not None:
        return lm.known
    data = load_line_data(_config(lm, data_dir), lm.vocab, lm.label_names)
    lm.known = {name: set(lines.texts) for name, lines in data.sets.items()}
    return lm.known


def _config(lm: LanguageModel, data_dir: str | None):
    if not data_dir:  # a copy otherwise: the loaded model's config stays what the run recorded
        return lm.config
    return dataclasses.replace(lm.config,
                               data=dataclasses.replace(lm.config.data, data_dir=data_dir))


def _device(lm: LanguageModel) -> torch.device:
    return next(lm.model.parameters()).device


def evaluate_split(lm: LanguageModel, split: str, batch_size: int | None = None,
                   data_dir: str | None = None) -> dict[str, Any]:
    """Line metrics (see ``evaluate_lines``) on a split of the run's data."""
    data = load_line_data(_config(lm, data_dir), lm.vocab, lm.label_names)
    if split not in data.sets:
        raise RnnlabError(f"this run's data has no {split} split "
                          f"(it has {', '.join(data.sets)})")
    lines = data.sets[split]
    batch_size = batch_size or lm.config.data.eval_batch_size
    return evaluate_lines(lm.model, lines, batch_size, _device(lm)) | {
        "batch_size": batch_size, "unknown": lines.unknown}


def _encoded(lm: LanguageModel, texts: list[str], label: str | None) -> LineSet:
    index = label_id(lm, label)
    names = lm.label_names
    labels = None if index is None else [names[index]] * len(texts)
    return encode_lines(lm.vocab, texts, labels, names)


def evaluate_texts(lm: LanguageModel, texts: list[str], label: str | None = None,
                   batch_size: int | None = None) -> dict[str, Any]:
    """Line metrics of the non-empty ``texts`` (each one line), for ``label`` if conditioned."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise RnnlabError("no non-empty line to score")
    lines = _encoded(lm, texts, label)
    batch_size = batch_size or lm.config.data.eval_batch_size
    return evaluate_lines(lm.model, lines, batch_size, _device(lm)) | {
        "batch_size": batch_size, "unknown": lines.unknown}


def score_lines(lm: LanguageModel, texts: list[str], label: str | None = None
                ) -> list[dict[str, Any]]:
    """Per text (one line each, framed by ``<s>``/``</s>``): total log-probability in nats
    with the end symbol, targets (tokens + 1), unknown tokens and perplexity."""
    lines = _encoded(lm, texts, label)
    nll = line_nll(lm.model, lines, lm.config.data.eval_batch_size, _device(lm))
    unk = lm.vocab.unk_id
    results = []
    for i, text in enumerate(texts):
        count = int(lines.lengths[i])
        ids = line_tokens(text, lm.vocab.level)
        results.append({"logprob": -float(nll[i]), "tokens": count,
                        "unknown": sum(lm.vocab.id(t) == unk for t in ids),
                        "ppl": math.exp(min(float(nll[i]) / count, 700))})
    return results
