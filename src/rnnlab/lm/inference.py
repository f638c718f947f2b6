"""A trained language model: load it, sample from it, measure it, save it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rnnlab import checkpoint as ckpt
from rnnlab.config import RunConfig
from rnnlab.data.text import tokenize
from rnnlab.data.vocab import EOS, Vocab
from rnnlab.errors import RnnlabError
from rnnlab.generation import SampleConfig, encode_prompt, generate_ids, render
from rnnlab.lm.data import encode, load_lm_data
from rnnlab.lm.evaluation import evaluate_stream, lm_metrics
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.runtime import resolve_device


class LanguageModel:
    """A trained recurrent language model with its vocabulary and config.

    >>> lm = LanguageModel.load("runs/my-run")          # doctest: +SKIP
    >>> lm.generate("the meaning of life is", max_tokens=20, seed=1)  # doctest: +SKIP
    """

    def __init__(self, model: RNNLanguageModel, vocab: Vocab, config: RunConfig,
                 run_dir: Path | None = None):
        self.model = model.eval()
        self.vocab = vocab
        self.config = config
        self.run_dir = run_dir

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str = "cpu",
             weights: str = "best") -> LanguageModel:
        """Load ``RUN/model.safetensors`` (``weights="best"``) or the latest ``last`` checkpoint."""
        run_dir = Path(run_dir)
        config = ckpt.load_config(run_dir)
        if config.task != "lm":
            raise RnnlabError(f"{run_dir} holds a {config.task} run, not a language model")
        vocab = Vocab.load(run_dir / ckpt.VOCAB)
        model = RNNLanguageModel(config.model, len(vocab))
        ckpt.load_weights(model, ckpt.weights_path(run_dir, weights))
        return cls(model.to(resolve_device(device)), vocab, config, run_dir)

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
        self.vocab.save(folder / ckpt.VOCAB)
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

    def generate(self, prime: str = "", max_tokens: int = 100, **options: Any) -> list[str]:
        """``num_samples`` continuations of ``prime`` (decoded together as one batch).

        Options are the fields of :class:`rnnlab.generation.SampleConfig`: temperature, top_k,
        top_p, skip, stop_at_eos, num_samples, seed, skip_unknown.
        """
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

    def evaluate_text(self, text: str, batch_size: int | None = 1) -> dict[str, Any]:
        """NLL, perplexity and bits per token of ``text``; unknown tokens are counted.

        The text is read as one stream (``batch_size`` 1 or None): every token is predicted from
        all the text before it, whatever the run's ``eval_batch_size``. A larger ``batch_size``
        reads that many contiguous rows in parallel, faster on a long text, but each row starts
        from an empty state, so the tokens at the start of every row lose their context.
        """
        tokens = tokenize(text, self.vocab.level)
        if len(tokens) < 2:
            raise RnnlabError("the text needs at least two tokens to be scored")
        ids, unknown = encode(self.vocab, tokens)
        return self.evaluate_ids(ids, 1 if batch_size is None else batch_size) | {
            "unknown": unknown}

    def perplexity(self, text: str, batch_size: int | None = 1) -> float:
        """Perplexity of ``text`` read as one stream (see ``evaluate_text``)."""
        return self.evaluate_text(text, batch_size)["ppl"]

    def evaluate(self, split: str = "test", batch_size: int | None = None,
                 data_dir: str | None = None) -> dict[str, Any]:
        """Metrics on a split of the corpus the model was trained on."""
        data_config = self.config.data
        if data_dir:  # a copy: the loaded model's config stays what the run recorded
            data_config = dataclasses.replace(data_config, data_dir=data_dir)
        data = load_lm_data(data_config, self.vocab)
        if split not in data.splits:
            raise RnnlabError(f"this run's data has no {split} split "
                              f"(it has {', '.join(data.splits)})")
        return self.evaluate_ids(data.splits[split], batch_size)

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
