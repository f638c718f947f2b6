"""A trained language model: load it, sample from it, measure it, save it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab.config import RunConfig
from rnnlab.data.text import tokenize
from rnnlab.data.vocab import EOS, Vocab
from rnnlab.errors import RnnlabError
from rnnlab.generation import SampleConfig, encode_prompt, generate_ids, render
from rnnlab.lines.inference import evaluate_split, evaluate_texts, generate_lines, score_lines
from rnnlab.lines.model import LineLanguageModel
from rnnlab.lm.adaptive import CACHE_SEGMENT, Progress, adaptive_nll
from rnnlab.lm.adaptive_run import adaptive_evaluate
from rnnlab.lm.data import LMData, encode, load_lm_data
from rnnlab.lm.evaluation import evaluate_stream, lm_metrics, perplexity
from rnnlab.models.language_model import RNNLanguageModel


class LanguageModel:
    """A trained recurrent language model with its vocabulary and config.

    >>> lm = LanguageModel.load("runs/my-run")          # doctest: +SKIP
    >>> lm.generate("the meaning of life is", max_tokens=20, seed=1)  # doctest: +SKIP
    """

    def __init__(self, model: RNNLanguageModel, vocab: Vocab, config: RunConfig,
                 run_dir: Path | None = None, *, label_names: list[str] | None = None):
        self.model = model.eval()
        self.vocab = vocab
        self.config = config
        self.run_dir = run_dir
        self.label_names = label_names  # a line model conditioned on labels: their names
        self.known: dict[str, set[str]] | None = None  # a line model's lines, once read

    @property
    def line_mode(self) -> bool:
        """Whether the run reads lines (``data.unit = "line"``; see ``rnnlab.lines``)."""
        return self.config.data.unit == "line"

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str = "cpu",
             weights: str = "best") -> LanguageModel:
        """Load ``RUN/model.safetensors`` (``weights="best"``) or the latest ``last`` checkpoint."""
        run_dir, config = ckpt.load_run_config(run_dir, "lm", "a language model")
        vocab, labels = ckpt.load_artifacts(run_dir)
        if config.data.unit == "line":
            model = LineLanguageModel(config.model, len(vocab), len(labels or ()))
        else:
            model = RNNLanguageModel(config.model, len(vocab))
        return cls(ckpt.load_run_weights(model, run_dir, weights, device), vocab, config, run_dir,
                   label_names=labels)

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write a loadable run directory (config, vocabulary, weights) to ``out_dir``.

        An existing non-empty ``out_dir`` is refused unless ``overwrite``; then it is replaced
        whole, so that no file of the previous run (its checkpoints, logs) stays beside the new
        one. The run is written to a temporary sibling first and swapped in by renames, so a
        crash leaves the old run or the new one, never a mix of the two.
        """
        given = Path(out_dir)
        out_dir = given.absolute()  # a name and a parent to stage beside, even for "."
        if out_dir.exists() and not out_dir.is_dir():
            raise RnnlabError(f"{given} exists and is not a directory")
        if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
            raise RnnlabError(f"{given} already exists and is not empty; choose another "
                              f"directory or pass overwrite=True to replace it whole")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".new",
                                        dir=out_dir.parent))
        try:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 is too private for a run
            self._write_run(staging)
            _swap_in(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return given

    def _write_run(self, folder: Path) -> None:
        ckpt.save_config(self.config, folder)
        ckpt.save_artifacts(folder, self.vocab, self.label_names)
        ckpt.save_weights(self.model, folder / ckpt.BEST)
        if self.run_dir is not None and (self.run_dir / ckpt.METRICS).exists():
            shutil.copyfile(self.run_dir / ckpt.METRICS, folder / ckpt.METRICS)

    # --- sampling ----------------------------------------------------------------------------

    def _ids(self, prime: str, config: SampleConfig) -> tuple[list[int], list[int], int | None]:
        config.validate()
        prompt = encode_prompt(self.vocab, prime, config)
        banned = [self.vocab.stoi[t] for t in config.skip if t in self.vocab]
        eos = self.vocab.stoi.get(EOS)
        return prompt, banned, eos

    def generate(self, prime: str = "", max_tokens: int = 100, *, label: str | None = None,
                 **options: Any) -> list[str]:
        """``num_samples`` continuations of ``prime`` (decoded together as one batch).

        Options are the fields of :class:`rnnlab.generation.SampleConfig`: temperature, top_k,
        top_p, skip, stop_at_eos, num_samples, seed, skip_unknown. A line model samples whole
        lines that start with ``prime`` (see ``rnnlab.lines.inference.generate_lines``);
        ``label`` picks the label of a model conditioned on one.
        """
        if self.line_mode:
            return generate_lines(self, prime, max_tokens, label, **options)
        if label is not None:
            raise RnnlabError("a label needs a run trained on labelled lines (--lines)")
        config = SampleConfig(max_tokens=max_tokens, **options)
        prompt, banned, eos = self._ids(prime, config)
        steps = list(generate_ids(self.model, prompt, config, banned, eos))
        if not steps:
            return [""] * config.num_samples
        ids = torch.stack(steps, dim=1).tolist()  # (N, T)
        texts = []
        for row in ids:
            if config.stop_at_eos and eos in row:
                row = row[: row.index(eos)]
            texts.append(render(self.vocab, row))
        return texts

    def stream(self, prime: str = "", max_tokens: int = 100, **options: Any) -> Iterator[str]:
        """Yield one sample piece by piece (a word or a character) as it is generated."""
        if self.line_mode or "label" in options:  # a line comes whole
            yield from self.generate(prime, max_tokens, **{**options, "num_samples": 1})
            return
        config = SampleConfig(max_tokens=max_tokens, **{**options, "num_samples": 1})
        prompt, banned, eos = self._ids(prime, config)
        first = True
        for step in generate_ids(self.model, prompt, config, banned, eos):
            token = int(step[0])
            if config.stop_at_eos and token == eos:
                return
            piece = render(self.vocab, [token])
            if self.vocab.level == "word" and not first and piece != "\n":
                piece = " " + piece
            first = piece == "\n"
            yield piece

    # --- measuring ---------------------------------------------------------------------------

    def evaluate_text(self, text: str, batch_size: int | None = 1, *,
                      dynamic: bool | dict[str, Any] = False, cache: bool | dict[str, Any] = False,
                      data_dir: str | None = None, progress: Progress | None = None,
                      ) -> dict[str, Any]:
        """NLL, perplexity and bits per token of ``text``; unknown tokens are counted.

        The text is read as one stream (``batch_size`` 1 or None): every token is predicted from
        all the text before it, whatever the run's ``eval_batch_size``. A larger ``batch_size``
        reads that many contiguous rows in parallel, faster on a long text, but each row starts
        from an empty state, so the tokens at the start of every row lose their context.
        ``dynamic`` and ``cache``: adaptive evaluation, as in ``evaluate`` (always one stream).
        """
        if self.line_mode:  # every non-empty line on its own
            _no_adaptive(dynamic, cache)
            return evaluate_texts(self, text.splitlines())
        tokens = tokenize(text, self.vocab.level)
        if len(tokens) < 2:
            raise RnnlabError("the text needs at least two tokens to be scored")
        ids, unknown = encode(self.vocab, tokens)
        if dynamic or cache:
            def train() -> torch.Tensor:
                return self._data(data_dir).splits["train"]
            return self._adaptive(ids, train, dynamic, cache, False, progress) | {
                "unknown": unknown}
        return self.evaluate_ids(ids, 1 if batch_size is None else batch_size) | {
            "unknown": unknown}

    def perplexity(self, text: str, batch_size: int | None = 1) -> float:
        """Perplexity of ``text`` read as one stream (see ``evaluate_text``)."""
        return self.evaluate_text(text, batch_size)["ppl"]

    def evaluate(self, split: str = "test", batch_size: int | None = None,
                 data_dir: str | None = None, *, dynamic: bool | dict[str, Any] = False,
                 cache: bool | dict[str, Any] = False, tune: bool = False,
                 progress: Progress | None = None) -> dict[str, Any]:
        """Metrics on a split of the corpus the model was trained on.

        ``dynamic`` (Krause et al., 2018) and ``cache`` (Grave et al., 2017) read the split as
        one stream with adaptive evaluation (see ``rnnlab.lm.adaptive``); a dict instead of True
        sets some of their settings (``lr``, ``decay``, ``segment``; ``window``, ``theta``,
        ``lam``), the others come from ``RUN/adaptive.json`` if tuned, else the defaults.
        ``tune`` (``split="valid"`` only) searches the settings on the valid split first and
        records them in ``RUN/adaptive.json``; ``progress(total, description)`` makes a bar.
        """
        if self.line_mode:
            _no_adaptive(dynamic, cache)
            return evaluate_split(self, split, batch_size, data_dir)
        if tune and split != "valid":
            raise RnnlabError(f"tuning searches on the valid split only, not on {split}: "
                              f"tune, then evaluate {split} with the recorded settings")
        if tune and not (dynamic or cache):
            raise RnnlabError("tuning needs dynamic evaluation or the cache (or both)")
        data = self._data(data_dir)
        if split not in data.splits:
            raise RnnlabError(f"this run's data has no {split} split "
                              f"(it has {', '.join(data.splits)})")
        if dynamic or cache:
            return self._adaptive(data.splits[split], lambda: data.splits["train"], dynamic,
                                  cache, tune, progress)
        return self.evaluate_ids(data.splits[split], batch_size)

    def _data(self, data_dir: str | None) -> LMData:
        data_config = self.config.data
        if data_dir:  # a copy: the loaded model's config stays what the run recorded
            data_config = dataclasses.replace(data_config, data_dir=data_dir)
        return load_lm_data(data_config, self.vocab)

    def _adaptive(self, ids: torch.Tensor, train: Callable[[], torch.Tensor],
                  dynamic: bool | dict[str, Any], cache: bool | dict[str, Any], tune: bool,
                  progress: Progress | None) -> dict[str, Any]:
        return adaptive_evaluate(self.model, ids, train, self.run_dir, self.vocab.level,
                                 dynamic=dynamic, cache=cache, tune=tune, progress=progress)

    def score(self, texts: list[str], *, label: str | None = None) -> list[dict[str, Any]]:
        """Per text, read as one stream from an empty state: total log-probability (nats),
        scored tokens, unknown tokens and perplexity (None for a text with nothing to score).

        As in training, where every line follows the end of the one before, a text is read
        after an end of line (``<eos>``, or a newline character at char level) and each of its
        lines ends with one, which is scored too. A line model (``line_mode``) reads each text
        as one line framed by ``<s>`` and ``</s>``: its total includes the end symbol's
        log-probability; ``label`` for a model conditioned on labels.
        """
        if self.line_mode:
            return score_lines(self, texts, label)
        eol = EOS if self.vocab.level == "word" else "\n"
        results = []
        for text in texts:
            tokens = tokenize(text, self.vocab.level)
            if self.vocab.level == "char" and tokens and tokens[-1] != eol:
                tokens.append(eol)
            ids, unknown = encode(self.vocab, tokens)
            if eol in self.vocab:
                ids = torch.cat([torch.tensor([self.vocab.id(eol)]), ids])
            if ids.numel() < 2:
                results.append({"logprob": 0.0, "tokens": 0, "unknown": unknown, "ppl": None})
                continue
            out = adaptive_nll(self.model, ids, segment=CACHE_SEGMENT)
            count = out["count"]
            results.append({"logprob": -out["total"], "tokens": count, "unknown": unknown,
                            "ppl": perplexity(out["total"] / count)})
        return results

    def evaluate_ids(self, ids: torch.Tensor, batch_size: int | None = None) -> dict[str, Any]:
        """Metrics over every target of an id stream (see ``evaluate_stream``).

        ``batch_size`` (default: the run's ``data.eval_batch_size``) contiguous rows of the
        stream are read in parallel, each starting from an empty state.
        """
        if batch_size is not None and batch_size < 1:
            raise RnnlabError(f"the batch size must be at least 1, got {batch_size}")
        batch_size = batch_size or self.config.data.eval_batch_size
        batch_size = max(1, min(batch_size, ids.numel() - 1))
        device = next(self.model.parameters()).device
        total, count = evaluate_stream(self.model, ids, batch_size, self.config.data.bptt, device)
        return lm_metrics(total, count) | {"batch_size": batch_size}


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``; an existing ``out_dir`` is renamed aside, then removed."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    aside.rmdir()  # only its unique name is wanted: the old run is renamed to it
    os.rename(out_dir, aside)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(aside, out_dir)  # put the old run back rather than leave no run at all
        raise
    shutil.rmtree(aside)


def _no_adaptive(dynamic: Any, cache: Any) -> None:
    if dynamic or cache:
        raise RnnlabError("dynamic evaluation and the cache read one stream; this run reads "
                          "lines, each from a fresh state")
