"""Tiny language-model runs end to end: metrics and files, variants, the best checkpoint,
exact resumption, and (slow) learning the synthetic language close to its true perplexity."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.api import LanguageModel
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import load_lm_data
from rnnlab.lm.evaluation import unigram_nll
from rnnlab.training.trainer import Callback, Trainer, TrainingInterrupted, TrainResult
from run_compare import assert_same_weights, comparable

pytestmark = pytest.mark.usefixtures("one_thread")

TrainTiny = Callable[..., TrainResult]  # the conftest fixture: train_tiny(name, **overrides)


# --- tiny language-model runs ------------------------------------------------------------------


def test_lm_run_max_steps_metrics_and_files(train_tiny: TrainTiny) -> None:
    result = train_tiny(train__max_steps=13, train__eval_every=5, train__epochs=5)
    run = result.run_dir
    assert result.stop_reason == "max_steps" and result.steps == 13
    lines = (run / ckpt.METRICS).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [5, 10, 13]  # one line per evaluation
    for record in records:
        assert {"step", "loss", "ppl", "lr", "best", "tokens"} <= set(record)
        assert record["ppl"] == pytest.approx(math.exp(record["loss"]))
        assert record["lr"] == pytest.approx(3e-3)
    assert result.metrics == records
    for name in (ckpt.CONFIG, ckpt.VOCAB, ckpt.BEST, ckpt.TRAINER, ckpt.RUN_INFO,
                 "last-00000013.safetensors"):
        assert (run / name).exists(), name
    info = json.loads((run / ckpt.RUN_INFO).read_text(encoding="utf-8"))
    assert info["summary"]["steps"] == 13 and info["summary"]["stop_reason"] == "max_steps"


def test_lm_run_on_a_local_text_file(train_tiny: TrainTiny, word_corpus: Path) -> None:
    result = train_tiny(data__text_path=str(word_corpus), train__max_steps=6)
    config = ckpt.load_config(result.run_dir)
    assert config.data.corpus is None and config.data.text_path == str(word_corpus)
    vocab = json.loads((result.run_dir / ckpt.VOCAB).read_text(encoding="utf-8"))["tokens"]
    assert vocab[:2] == ["<unk>", "<eos>"] and {"cat", "river", "morning"} <= set(vocab)
    assert result.steps == 6 and result.metrics[-1]["step"] == 6


@pytest.mark.parametrize(
    "model",
    [{"model__output": "adaptive", "model__cutoffs": [20, 100]}, {"model__input": "onehot"},
     {"model__cell": "gru", "model__tie_weights": True, "model__num_layers": 2}],
    ids=["adaptive", "onehot", "gru-tied"],
)
def test_lm_variants_train_save_load_and_sample(train_tiny: TrainTiny,
                                                model: dict[str, Any]) -> None:
    result = train_tiny(train__max_steps=4, **model)
    lm = LanguageModel.load(result.run_dir)
    assert lm.evaluate("valid")["loss"] == pytest.approx(result.best["loss"], rel=1e-6)
    assert len(lm.generate("", 5, seed=1, num_samples=2)) == 2


@pytest.mark.slow
def test_model_safetensors_is_the_best_checkpoint(train_tiny: TrainTiny) -> None:
    result = train_tiny(train__max_steps=24, train__eval_every=6, train__epochs=5,
                        train__lr=0.05)
    best = result.best
    assert best is not None and best["loss"] == min(r["loss"] for r in result.metrics)
    lm = LanguageModel.load(result.run_dir)
    again = lm.evaluate("valid")
    assert again["loss"] == pytest.approx(best["loss"], rel=1e-6)
    assert again["tokens"] == best["tokens"]


# Dropout, embedding dropout and variable BPTT all draw random numbers, and the hidden state is
# carried between windows: everything a resume must restore.
RESUME_SETTINGS: dict[str, Any] = {
    "model__dropout": 0.3, "model__embedding_dropout": 0.1, "model__num_layers": 2,
    "data__variable_bptt": True, "data__batch_size": 32, "train__epochs": 5,
}


@pytest.mark.slow
def test_resume_with_a_longer_budget_is_bit_identical_to_an_uninterrupted_run(
        train_tiny: TrainTiny) -> None:
    n, k = 45, 15  # about 60 steps per epoch at batch 32: the resumed part crosses no epoch
    full = train_tiny("full", train__max_steps=n, train__eval_every=k, **RESUME_SETTINGS)
    part = train_tiny("part", train__max_steps=k, train__eval_every=k, **RESUME_SETTINGS)
    assert part.steps == k
    resumed = rnnlab.resume(part.run_dir, {"train.max_steps": n})
    assert resumed.steps == n == full.steps
    last = f"last-{n:08d}.safetensors"
    assert_same_weights(full.run_dir / last, resumed.run_dir / last)
    assert_same_weights(full.run_dir / ckpt.BEST, resumed.run_dir / ckpt.BEST)
    assert comparable(resumed.metrics) == comparable(full.metrics)


@pytest.mark.slow
def test_resume_across_an_epoch_boundary_is_bit_identical(train_tiny: TrainTiny) -> None:
    settings = {**RESUME_SETTINGS, "data__synthetic_tokens": 8000}  # ~25 steps per epoch
    n, k = 40, 10
    full = train_tiny("full", train__max_steps=n, train__eval_every=k, **settings)
    part = train_tiny("part", train__max_steps=k, train__eval_every=k, **settings)
    resumed = rnnlab.resume(part.run_dir, {"train.max_steps": n})
    last = f"last-{n:08d}.safetensors"
    assert_same_weights(full.run_dir / last, resumed.run_dir / last)
    assert comparable(resumed.metrics) == comparable(full.metrics)


class _InterruptAt(Callback):
    """Send this process SIGINT after ``step``, as Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, trainer: Trainer, loss: float) -> None:
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_resume_after_ctrl_c_mid_epoch_is_bit_identical(train_tiny: TrainTiny) -> None:
    # A cosine schedule with warm-up depends on the whole budget, so this run keeps its config.
    settings = {"train__max_steps": 30, "train__eval_every": 12, "train__schedule": "cosine",
                "train__warmup_steps": 5, **RESUME_SETTINGS}
    full = train_tiny("full", **settings)
    with pytest.raises(TrainingInterrupted) as caught:
        train_tiny("cut", callbacks=[_InterruptAt(17)], **settings)
    assert caught.value.step == 17  # stopped right after the step that saw the signal
    resumed = rnnlab.resume(caught.value.run_dir)
    assert resumed.steps == 30
    last = "last-00000030.safetensors"
    assert_same_weights(full.run_dir / last, resumed.run_dir / last)
    assert comparable(resumed.metrics) == comparable(full.metrics)


def test_resume_refuses_a_run_without_trainer_state(train_tiny: TrainTiny) -> None:
    result = train_tiny(train__max_steps=3)
    (result.run_dir / ckpt.TRAINER).unlink()
    with pytest.raises(RnnlabError, match="nothing to resume"):
        rnnlab.resume(result.run_dir, {"train.max_steps": 6})


def test_train_refuses_to_overwrite_a_run(train_tiny: TrainTiny) -> None:
    train_tiny("same", train__max_steps=2)
    with pytest.raises(RnnlabError, match="already holds a run"):
        train_tiny("same", train__max_steps=2)


# --- learning --------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_on_synthetic_gets_within_10_percent_of_the_true_perplexity(
        tmp_path: Path) -> None:
    # Long enough to learn the language: 2 epochs of 200k tokens through a 1 x 128 LSTM.
    overrides = {
        "data.synthetic_tokens": 200_000, "model.hidden_size": 128, "model.embedding_dim": 64,
        "model.dropout": 0.0, "train.epochs": 2, "train.lr": 5e-3, "train.device": "cpu",
        "train.threads": 1,
    }
    config = rnnlab.resolve_config(preset="synthetic", overrides=overrides)
    result = rnnlab.train(config, tmp_path / "synthetic")
    data = load_lm_data(config.data)
    true_ppl = math.exp(data.synthetic.true_nll("valid"))
    unigram_ppl = math.exp(unigram_nll(data.splits["train"], data.splits["valid"],
                                       len(data.vocab)))
    model_ppl = result.best["ppl"]
    assert true_ppl < unigram_ppl / 2  # the source really has structure to learn
    assert model_ppl >= true_ppl * 0.99  # no model beats the source (up to sampling noise)
    assert model_ppl <= true_ppl * 1.10, (model_ppl, true_ppl)
    assert model_ppl < unigram_ppl / 2
