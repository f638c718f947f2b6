"""Numerical faults: non-finite steps are skipped; a run of them rolls back to the last good
checkpoint with a halved learning rate (at most MAX_ROLLBACKS times), else the run stops with a
clear message; and no NaN or inf ever reaches a weights file on disk.

Faults are injected into a real language-model run by wrapping ``LanguageModelTask.train_loss``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab import cli
from rnnlab.config import ModelConfig
from rnnlab.errors import RnnlabError
from rnnlab.lm.task import LanguageModelTask
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.training import trainer as trainer_module
from rnnlab.training.checkpointing import MAX_ROLLBACKS
from rnnlab.training.trainer import MAX_BAD_STEPS, Callback, Trainer, TrainResult

LR = 3e-3
OVERRIDES: dict[str, Any] = {
    "data.corpus": "synthetic", "data.synthetic_tokens": 4_000, "data.batch_size": 8,
    "data.bptt": 10, "data.eval_batch_size": 8, "model.embedding_dim": 16,
    "model.hidden_size": 16, "model.num_layers": 1, "model.dropout": 0.0,
    "train.schedule": "constant", "train.warmup_steps": 0, "train.lr": LR, "train.epochs": 5,
    "train.max_steps": 60, "train.eval_every": 10, "train.log_every": 2, "train.device": "cpu",
    "train.threads": 1, "train.seed": 2,
}


def train(run: Path, callbacks: tuple[Callback, ...] = (), **extra: Any) -> TrainResult:
    config = rnnlab.resolve_config(preset="synthetic", overrides={**OVERRIDES, **extra})
    return rnnlab.train(config, run, callbacks=callbacks)


def poison_calls(monkeypatch: pytest.MonkeyPatch, bad: Callable[[int], bool]) -> list[int]:
    """Make the loss NaN on the train_loss calls (1-based) for which ``bad`` is true.

    Counting calls rather than steps makes a fault transient: after a roll-back the same steps
    are trained again by new calls, which are clean.
    """
    calls: list[int] = []
    real = LanguageModelTask.train_loss

    def train_loss(self: LanguageModelTask, batch: Any) -> tuple[torch.Tensor, int]:
        loss, items = real(self, batch)
        calls.append(len(calls) + 1)
        return (loss * math.nan if bad(len(calls)) else loss), items

    monkeypatch.setattr(LanguageModelTask, "train_loss", train_loss)
    return calls


def poison_steps(monkeypatch: pytest.MonkeyPatch, first_bad_step: int) -> None:
    """NaN losses from step ``first_bad_step`` on, however often those steps are retried."""
    real_step, real_loss = Trainer.train_step, LanguageModelTask.train_loss

    def train_step(self: Trainer, batch: Any) -> None:
        self.task.poisoned = self.step >= first_bad_step
        real_step(self, batch)

    def train_loss(self: LanguageModelTask, batch: Any) -> tuple[torch.Tensor, int]:
        loss, items = real_loss(self, batch)
        return (loss * math.nan if getattr(self, "poisoned", False) else loss), items

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(LanguageModelTask, "train_loss", train_loss)


def assert_weights_on_disk_finite(run: Path) -> None:
    files = list(run.glob("*.safetensors"))
    for path in files:
        for name, tensor in load_file(path).items():
            assert bool(torch.isfinite(tensor).all()), f"{path.name}: {name} is not finite"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_burst_of_nan_steps_rolls_back_with_half_the_rate_and_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Calls 34-38 are steps 33-37: five in a row, after the checkpoint of step 30.
    poison_calls(monkeypatch, lambda call: 34 <= call < 34 + MAX_BAD_STEPS)
    with pytest.warns(RuntimeWarning, match="rolled back to the checkpoint of step 30") as seen:
        result = train(tmp_path / "run")
    assert len([w for w in seen if "rolled back" in str(w.message)]) == 1
    assert result.stop_reason == "max_steps" and result.steps == 60
    # The evaluation log goes on from the checkpoint without duplicates, at half the rate.
    records = ckpt.read_metrics(result.run_dir)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert [r["lr"] for r in records] == [LR] * 3 + [LR / 2] * 3
    assert all(math.isfinite(r["loss"]) for r in records)
    log_steps = [r["step"] for r in ckpt.read_metrics(result.run_dir, ckpt.TRAIN_LOG)]
    assert log_steps == list(range(2, 61, 2))
    state = ckpt.load_trainer_state(result.run_dir / ckpt.TRAINER)
    assert state["lr_scale"] == 0.5 and state["rollbacks"] == 1
    assert_weights_on_disk_finite(result.run_dir)

    # The halved rate is part of the run's state: a resume keeps it.
    monkeypatch.undo()
    more = rnnlab.resume(result.run_dir, {"train.max_steps": 70})
    assert more.metrics[-1]["step"] == 70 and more.metrics[-1]["lr"] == LR / 2


def test_isolated_nan_steps_are_skipped_without_a_roll_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {5, 9, 13, 14, 15, 16}  # never MAX_BAD_STEPS in a row
    calls = poison_calls(monkeypatch, lambda call: call in bad)
    seen: list[list[float]] = []

    class WatchWeights(Callback):
        def on_step(self, trainer: Trainer, loss: float) -> None:
            seen.append([float(p.detach().abs().sum()) for p in trainer.model.parameters()])

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a roll-back warning would fail here
        result = train(tmp_path / "run", callbacks=(WatchWeights(),))
    assert result.steps == 60 and len(calls) == 60
    for step in bad:  # a skipped step leaves the weights exactly as they were
        assert seen[step - 1] == seen[step - 2]
    assert all(math.isfinite(v) for row in seen for v in row)
    assert ckpt.load_trainer_state(result.run_dir / ckpt.TRAINER)["rollbacks"] == 0


def test_a_persistent_fault_stops_after_the_last_roll_back_with_one_clear_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    poison_steps(monkeypatch, first_bad_step=25)  # every retry of step 25 fails again
    args = ["train", "--preset", "synthetic", "--samples", "0", "--out", str(tmp_path / "run")]
    for key, value in OVERRIDES.items():
        args += ["--set", f"{key}={value}"]
    code = cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    warned = [line for line in err if line.startswith("rnnlab: warning:")]
    errors = [line for line in err if not line.startswith("rnnlab: warning:")]
    assert len(warned) == MAX_ROLLBACKS
    assert all("rolled back to the checkpoint of step 20" in line for line in warned)
    assert len(errors) == 1 and errors[0].startswith("rnnlab: error:"), err
    assert "not finite" in errors[0] and f"{MAX_ROLLBACKS} roll-backs" in errors[0]
    assert "--resume" in errors[0] and "Traceback" not in "\n".join(err)
    run = tmp_path / "run"
    state = ckpt.load_trainer_state(run / ckpt.TRAINER)
    assert state["step"] == 20  # the last good checkpoint is what is left
    assert (run / state["weights"]).exists()
    assert max(r["step"] for r in ckpt.read_metrics(run)) == 20
    assert_weights_on_disk_finite(run)


def test_nan_before_any_checkpoint_stops_cleanly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_calls(monkeypatch, lambda call: True)
    with pytest.raises(RnnlabError, match="not finite.*before any checkpoint"):
        train(tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.safetensors"))
    assert not (tmp_path / "run" / ckpt.TRAINER).exists()


def test_nan_gradients_with_a_finite_loss_never_reach_the_weights_without_clipping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The loss is finite; only its gradient is NaN. With train.clip = 0 the norm was never
    # computed, so such a step went through and put NaN into every weight.
    real = LanguageModelTask.train_loss
    calls = [0]

    def train_loss(self: LanguageModelTask, batch: Any) -> tuple[torch.Tensor, int]:
        loss, items = real(self, batch)
        calls[0] += 1
        if 14 <= calls[0] < 17:
            loss.register_hook(lambda grad: grad * math.nan)
        return loss, items

    monkeypatch.setattr(LanguageModelTask, "train_loss", train_loss)
    finite: list[bool] = []

    class WatchWeights(Callback):
        def on_step(self, trainer: Trainer, loss: float) -> None:
            finite.append(all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters()))

    result = train(tmp_path / "run", callbacks=(WatchWeights(),), **{"train.clip": 0})
    assert result.steps == 60 and all(finite)
    assert_weights_on_disk_finite(result.run_dir)


def test_weights_that_became_non_finite_are_never_saved_over_good_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fault that bypasses the loss guard (a bad kernel, memory corruption): NaN weights at
    # step 23. The next checkpoint (the evaluation of step 30) must not write them.
    broken = [False]

    class BreakWeights(Callback):
        def on_step(self, trainer: Trainer, loss: float) -> None:
            if trainer.step == 23 and not broken[0]:
                broken[0] = True
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(math.nan)

    monkeypatch.setattr(trainer_module, "MAX_BAD_STEPS", 100)  # let it reach the evaluation
    with pytest.warns(RuntimeWarning, match="weights became non-finite; rolled back"):
        result = train(tmp_path / "run", callbacks=(BreakWeights(),))
    assert result.steps == 60
    assert [r["step"] for r in result.metrics] == [10, 20, 30, 40, 50, 60]
    assert_weights_on_disk_finite(result.run_dir)


def test_a_huge_learning_rate_stops_cleanly_with_finite_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SGD at 1e37 overflows the weights to inf within a few steps: every retry fails too.
    args = ["train", "--preset", "synthetic", "--samples", "0", "--out", str(tmp_path / "run")]
    settings = {**OVERRIDES, "train.optimizer": "sgd", "train.clip": 0, "train.lr": 1e37,
                "train.eval_every": 5}
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    code = cli.main(args)
    err = [line for line in capsys.readouterr().err.splitlines()
           if not line.startswith("rnnlab: warning:")]
    assert code != 0 and len(err) == 1 and err[0].startswith("rnnlab: error:"), err
    assert_weights_on_disk_finite(tmp_path / "run")
    # The last checkpoint before the fault is what is left, intact and loadable.
    state = ckpt.load_trainer_state(tmp_path / "run" / ckpt.TRAINER)
    assert state["step"] % 5 == 0 and (tmp_path / "run" / state["weights"]).exists()


def test_save_weights_refuses_non_finite_values_and_keeps_the_old_file(tmp_path: Path) -> None:
    model = RNNLanguageModel(ModelConfig(embedding_dim=4, hidden_size=4, num_layers=1), 11)
    path = tmp_path / ckpt.BEST
    ckpt.save_weights(model, path)
    before = sha256(path)
    for bad in (math.nan, math.inf, -math.inf):
        with torch.no_grad():
            model.rnn.weight_hh_l0[0, 0] = bad
        with pytest.raises(RnnlabError, match="refused to write .*NaN or infinite"):
            ckpt.save_weights(model, path)
        assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.BEST]  # no temporary file left
