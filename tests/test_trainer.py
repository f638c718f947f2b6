"""The Trainer: budgets, evaluation records, the best checkpoint, plateau decay, early stopping,
exact resumption, and (slow) learning the synthetic language close to its true perplexity."""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.api import LanguageModel
from rnnlab.config import RunConfig
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import load_lm_data
from rnnlab.lm.evaluation import unigram_nll
from rnnlab.training.trainer import Callback, Trainer, TrainingInterrupted, TrainResult

pytestmark = pytest.mark.usefixtures("one_thread")

TrainTiny = Callable[..., TrainResult]  # the conftest fixture: train_tiny(name, **overrides)


# --- a scripted task: the Trainer's logic without a language model ------------------------------


class ScriptedTask:
    """A task whose validation losses are given in advance, so every decision is known.

    The model is a small linear layer that the optimiser moves at every step, so checkpoints
    taken at different steps hold different weights.
    """

    best_metric = "loss"
    higher_is_better = False
    unit = "items"

    def __init__(self, valid_losses: list[float], steps_per_epoch: int = 100,
                 train_loss: float | None = None):
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.valid_losses = list(valid_losses)
        self.n = steps_per_epoch
        self.fixed_loss = train_loss
        self.evaluations = 0

    def steps_per_epoch(self) -> int:
        return self.n

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        for i in range(start, self.n):
            yield torch.full((4, 3), float(i % 7) + epoch)

    def train_loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        loss = (self.model(batch) - 1.0).pow(2).mean()
        if self.fixed_loss is not None:
            loss = loss * 0 + self.fixed_loss
        return loss, batch.shape[0]

    def evaluate(self, split: str) -> dict[str, float]:
        loss = self.valid_losses[min(self.evaluations, len(self.valid_losses) - 1)]
        self.evaluations += 1
        return {"loss": loss, "ppl": math.exp(loss)}

    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evaluations = state["evaluations"]


class Snapshots(Callback):
    """Copies of the weights at every evaluation, by step."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_eval(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.weights[trainer.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _scripted_trainer(tmp_path: Path, task: ScriptedTask, callbacks: list[Callback] = (),
                      **train: Any) -> Trainer:
    config = RunConfig()
    config.train.optimizer = "adam"
    config.train.lr = 0.01
    config.train.schedule = "constant"
    for key, value in train.items():
        setattr(config.train, key, value)
    config.validate()
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return Trainer(task, config, run_dir, torch.device("cpu"), callbacks)


def test_max_steps_stops_at_that_step_and_evaluates_at_the_end(tmp_path: Path) -> None:
    trainer = _scripted_trainer(tmp_path, ScriptedTask([3.0, 2.0, 1.0]), max_steps=10,
                                eval_every=4)
    result = trainer.fit()
    assert result.stop_reason == "max_steps" and result.steps == 10 == trainer.step
    # 4 and 8 from eval_every, 10 because the budget ended between evaluations.
    assert [r["step"] for r in result.metrics] == [4, 8, 10]
    state = ckpt.load_trainer_state(tmp_path / "run" / ckpt.TRAINER)
    assert state["step"] == 10 and state["weights"] == "last-00000010.safetensors"
    assert [p.name for p in (tmp_path / "run").glob("last-*")] == ["last-00000010.safetensors"]


def test_without_a_terminal_a_progress_line_is_printed_every_log_every_steps(
        tmp_path: Path) -> None:
    import io
    import re

    from rnnlab.training.callbacks import PrintEvaluations

    out = io.StringIO()
    trainer = _scripted_trainer(tmp_path, ScriptedTask([1.0], steps_per_epoch=40),
                                [PrintEvaluations(out)], max_steps=30, eval_every=20,
                                log_every=10)
    trainer.fit()
    lines = out.getvalue().splitlines()
    progress = [line for line in lines if "%" in line]
    assert [line.split(" | ")[0] for line in progress] == ["step 10", "step 20", "step 30"]
    pattern = (r"step \d+ \| \d+\.\d% \| train loss \d+\.\d{4} \| [\d,]+ items/s \| "
               r"elapsed \d+:\d\d")
    assert all(re.fullmatch(pattern, line) for line in progress), progress
    assert progress[0].split(" | ")[1] == "33.3%"  # 10 of max_steps=30
    assert len(lines) == len(progress) + 2  # and the evaluations at steps 20 and 30


def test_epoch_budget_evaluates_once_per_epoch(tmp_path: Path) -> None:
    trainer = _scripted_trainer(tmp_path, ScriptedTask([3.0, 2.0, 1.0], steps_per_epoch=6),
                                epochs=3)
    result = trainer.fit()
    assert result.stop_reason == "epochs"
    assert [r["step"] for r in result.metrics] == [6, 12, 18]
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3]


def test_early_stop_after_that_many_evaluations_without_improvement(tmp_path: Path) -> None:
    losses = [3.0, 2.0, 2.5, 2.4, 2.6, 1.0, 0.5]
    trainer = _scripted_trainer(tmp_path, ScriptedTask(losses), eval_every=2, early_stop=3,
                                max_steps=100)
    result = trainer.fit()
    # Best at the 2nd evaluation, then three without improvement: stop after the 5th.
    assert result.stop_reason == "early_stop"
    assert [r["step"] for r in result.metrics] == [2, 4, 6, 8, 10]
    assert [r["best"] for r in result.metrics] == [True, True, False, False, False]
    assert result.best["step"] == 4

    # Without early stopping the same losses run to the step budget.
    other = tmp_path / "other"
    other.mkdir()
    trainer = _scripted_trainer(other, ScriptedTask(losses), eval_every=2, max_steps=14)
    assert trainer.fit().stop_reason == "max_steps"


@pytest.mark.parametrize("patience", [0, 1])
def test_plateau_decays_lr_when_valid_loss_does_not_improve(tmp_path: Path, patience: int) -> None:
    losses = [3.0, 2.0, 2.5, 1.5, 1.7, 1.8, 1.9]
    trainer = _scripted_trainer(tmp_path, ScriptedTask(losses), schedule="plateau", lr=0.01,
                                lr_decay=0.5, patience=patience, eval_every=3, max_steps=21)
    result = trainer.fit()
    records = result.metrics
    assert len(records) == 7
    # Evaluations 3, 5, 6 and 7 do not improve; with patience p the rate is multiplied by 0.5
    # once p + 1 evaluations in a row have not improved.
    if patience == 0:
        decayed_at = [3, 5, 6, 7]
        lrs = [0.01, 0.01, 0.01, 0.005, 0.005, 0.0025, 0.00125]
    else:
        decayed_at = [6]
        lrs = [0.01] * 6 + [0.005]
    assert [i + 1 for i, r in enumerate(records) if "lr_decayed_to" in r] == decayed_at
    # `lr` in a record is the rate of the steps before that evaluation.
    assert [r["lr"] for r in records] == pytest.approx(lrs)
    final = 0.01 * 0.5 ** len(decayed_at)
    assert records[-1].get("lr_decayed_to", final) == pytest.approx(final)
    assert trainer.schedule.lr(trainer.step, trainer.progress()) == pytest.approx(final)


def test_constant_schedule_never_decays(tmp_path: Path) -> None:
    trainer = _scripted_trainer(tmp_path, ScriptedTask([3.0, 4.0, 5.0, 6.0]), eval_every=2,
                                max_steps=8)
    records = trainer.fit().metrics
    assert [r["lr"] for r in records] == [0.01] * 4
    assert not any("lr_decayed_to" in r for r in records)


def test_best_checkpoint_holds_the_weights_of_the_best_evaluation(tmp_path: Path) -> None:
    snapshots = Snapshots()
    trainer = _scripted_trainer(tmp_path, ScriptedTask([3.0, 1.0, 2.0, 4.0]), [snapshots],
                                eval_every=3, max_steps=12)
    result = trainer.fit()
    assert result.best["step"] == 6 and result.best["loss"] == 1.0
    best = load_file(tmp_path / "run" / ckpt.BEST)
    assert all(torch.equal(best[k], snapshots.weights[6][k]) for k in best)
    assert not all(torch.equal(best[k], snapshots.weights[12][k]) for k in best)


def test_resume_restores_schedule_best_value_and_early_stop_counters(tmp_path: Path) -> None:
    # Evaluations 3 and 4 do not improve: by step 12 the plateau rule has halved the rate twice
    # and early stopping has counted two bad evaluations, all of which the resume must carry.
    losses = [3.0, 2.0, 2.5, 2.6, 1.0, 1.1, 1.2, 1.3]
    settings = {"schedule": "plateau", "lr_decay": 0.5, "eval_every": 3, "early_stop": 3}
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full_dir.mkdir()
    part_dir.mkdir()
    full = _scripted_trainer(full_dir, ScriptedTask(losses), max_steps=30, **settings).fit()
    _scripted_trainer(part_dir, ScriptedTask(losses), max_steps=12, **settings).fit()
    trainer = _scripted_trainer(part_dir, ScriptedTask(losses), max_steps=30, **settings)
    trainer.resume()
    assert trainer.step == 12 and trainer.best_value == 2.0 and trainer.evals_since_best == 2
    assert trainer.schedule.scale == 0.25
    resumed = trainer.fit()
    assert resumed.stop_reason == full.stop_reason == "early_stop"
    assert _comparable(resumed.metrics) == _comparable(full.metrics)
    _assert_same_weights(full_dir / "run" / ckpt.BEST, part_dir / "run" / ckpt.BEST)


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path: Path) -> None:
    task = ScriptedTask([1.0], train_loss=float("nan"))
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer = _scripted_trainer(tmp_path, task, max_steps=50)
    with pytest.raises(RnnlabError, match="not finite"):
        trainer.fit()
    # No NaN ever reached the weights.
    assert all(torch.equal(v, before[k]) for k, v in task.model.state_dict().items())


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
    result = train_tiny(data__text=str(word_corpus), train__max_steps=6)
    config = ckpt.load_config(result.run_dir)
    assert config.data.corpus is None and config.data.text == str(word_corpus)
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


def test_model_safetensors_is_the_best_checkpoint(train_tiny: TrainTiny) -> None:
    result = train_tiny(train__max_steps=24, train__eval_every=6, train__epochs=5,
                        train__lr=0.05)
    best = result.best
    assert best is not None and best["loss"] == min(r["loss"] for r in result.metrics)
    lm = LanguageModel.load(result.run_dir)
    again = lm.evaluate("valid")
    assert again["loss"] == pytest.approx(best["loss"], rel=1e-6)
    assert again["tokens"] == best["tokens"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"tensors differ after resuming: {different}"


def _comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    timing = {"elapsed", "eval_seconds", "tokens_per_s", "items_per_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


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
    _assert_same_weights(full.run_dir / last, resumed.run_dir / last)
    _assert_same_weights(full.run_dir / ckpt.BEST, resumed.run_dir / ckpt.BEST)
    assert _comparable(resumed.metrics) == _comparable(full.metrics)


@pytest.mark.slow
def test_resume_across_an_epoch_boundary_is_bit_identical(train_tiny: TrainTiny) -> None:
    settings = {**RESUME_SETTINGS, "data__synthetic_tokens": 8000}  # ~25 steps per epoch
    n, k = 40, 10
    full = train_tiny("full", train__max_steps=n, train__eval_every=k, **settings)
    part = train_tiny("part", train__max_steps=k, train__eval_every=k, **settings)
    resumed = rnnlab.resume(part.run_dir, {"train.max_steps": n})
    last = f"last-{n:08d}.safetensors"
    _assert_same_weights(full.run_dir / last, resumed.run_dir / last)
    assert _comparable(resumed.metrics) == _comparable(full.metrics)


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
    _assert_same_weights(full.run_dir / last, resumed.run_dir / last)
    assert _comparable(resumed.metrics) == _comparable(full.metrics)


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



_HEAP_SCRIPT = """
import ctypes, sys, torch
from rnnlab.fast.memory import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = libc.mallinfo2()
buffer = torch.ones(5 << 20)  # 20 MiB, the size of a small model's logits
mapped = libc.mallinfo2().hblkhd - before.hblkhd
del buffer
print(mapped, libc.mallinfo2().arena - before.arena)
"""


def _untuned_malloc_env() -> dict[str, str]:
    """This process's environment without what tunes glibc's malloc (``MALLOC_*`` variables,
    ``glibc.malloc.*`` tunables) or replaces it (``LD_PRELOAD``): the test needs its defaults."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key != "LD_PRELOAD"}
    tunables = [item for item in env.pop("GLIBC_TUNABLES", "").split(":")
                if item and not item.startswith("glibc.malloc.")]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
@pytest.mark.parametrize("mode", ["default", "keep"])
def test_freed_memory_stays_in_the_heap_for_the_next_step(mode: str) -> None:
    done = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT, mode], capture_output=True,
                          text=True, check=True, env=_untuned_malloc_env())
    mapped, heap_growth = map(int, done.stdout.split())  # bytes, over the buffer's life
    if mode == "default":  # glibc maps a block this large and unmaps it when freed...
        assert mapped >= 20 << 20 and heap_growth < 4 << 20
    else:  # ...while kept, it comes from the heap and stays there, ready for the next step
        assert mapped < 4 << 20 and heap_growth >= 16 << 20
