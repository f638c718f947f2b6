"""The Trainer's logic on a scripted task: budgets, evaluation records, the best checkpoint,
plateau decay, early stopping, resumption and non-finite steps (language-model runs end to end:
test_lm_runs.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from rnnlab import checkpoint as ckpt
from rnnlab.config import RunConfig
from rnnlab.errors import RnnlabError
from rnnlab.training.trainer import Callback, Trainer, TrainResult
from run_compare import assert_same_weights, comparable

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
    assert comparable(resumed.metrics) == comparable(full.metrics)
    assert_same_weights(full_dir / "run" / ckpt.BEST, part_dir / "run" / ckpt.BEST)


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path: Path) -> None:
    task = ScriptedTask([1.0], train_loss=float("nan"))
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer = _scripted_trainer(tmp_path, task, max_steps=50)
    with pytest.raises(RnnlabError, match="not finite"):
        trainer.fit()
    # No NaN ever reached the weights.
    assert all(torch.equal(v, before[k]) for k, v in task.model.state_dict().items())
