"""NT-ASGD (Merity et al., 2017): the weight average, its trigger, evaluation and checkpoints on
the average, bit-identical resumes, and fine-tuning a finished run into a new one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab import cli
from rnnlab.config import TrainConfig
from rnnlab.training.averaging import WeightAverage
from rnnlab.training.trainer import Callback, Trainer
from run_compare import assert_same_weights, comparable

pytestmark = pytest.mark.usefixtures("one_thread")

ASGD: dict[str, Any] = {"train__optimizer": "asgd", "train__lr": 0.5, "train__epochs": 5,
                        "model__dropout": 0.2, "model__num_layers": 2}


def test_the_average_is_the_mean_of_the_iterates_after_each_step() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    average = WeightAverage(model, TrainConfig(optimizer="asgd"))
    iterates = []
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update()
        iterates.append([p.detach().clone() for p in model.parameters()])
    assert average.count == 5
    for k, mean in enumerate(average.average):
        torch.testing.assert_close(mean, torch.stack([it[k] for it in iterates]).mean(0))
    raw = [p.detach().clone() for p in model.parameters()]
    with average.in_model():  # the model holds the average, then its own weights again
        held = [p.detach().clone() for p in model.parameters()]
    for k in range(2):
        torch.testing.assert_close(held[k], torch.stack([it[k] for it in iterates]).mean(0))
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw, strict=True))


def test_nt_trigger_fires_when_a_loss_is_worse_than_the_best_before_the_last_nonmono() -> None:
    average = WeightAverage(nn.Linear(2, 2), TrainConfig(optimizer="nt-asgd", nonmono=2))
    # 3.5 is not worse than min(5) (the last two are left out); 4.5 is worse than min(5, 4).
    fired = [average.after_eval(loss) for loss in (5.0, 4.0, 3.0, 3.5, 4.5, 9.0)]
    assert fired == [False, False, False, False, True, False]
    average.update()
    assert average.count == 1
    plain = WeightAverage(nn.Linear(2, 2), TrainConfig(optimizer="sgd"))
    assert not any(plain.after_eval(loss) for loss in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0))


class _Averages(Callback):
    """At every evaluation: the average, the iterates, and the loss of the averaged weights."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_eval(self, trainer: Trainer, record: dict[str, Any]) -> None:
        with trainer.averaging.in_model():
            averaged = {k: v.clone() for k, v in ckpt.model_tensors(trainer.model).items()}
            loss = trainer.task.evaluate("valid")["loss"]
        raw = {k: v.clone() for k, v in ckpt.model_tensors(trainer.model).items()}
        self.seen.append({"record": record, "averaged": averaged, "loss": loss, "raw": raw})


def test_evaluation_and_the_best_weights_use_the_averaged_weights(train_tiny: Any) -> None:
    seen = _Averages()
    result = train_tiny(callbacks=[seen], train__max_steps=9, train__eval_every=3, **ASGD)
    for item in seen.seen:
        assert item["record"]["loss"] == pytest.approx(item["loss"], rel=1e-6)
    best = [item for item in seen.seen if item["record"]["best"]][-1]
    saved = load_file(result.run_dir / ckpt.BEST)
    assert all(torch.equal(saved[k], best["averaged"][k]) for k in saved)
    assert any(not torch.equal(saved[k], best["raw"][k]) for k in saved)  # not the iterates


@pytest.mark.slow
def test_resume_in_the_middle_of_averaging_ends_bit_identical(train_tiny: Any) -> None:
    n, k = 12, 4
    full = train_tiny("full", train__max_steps=n, train__eval_every=k, **ASGD)
    part = train_tiny("part", train__max_steps=k, train__eval_every=k, **ASGD)
    resumed = rnnlab.resume(part.run_dir, {"train.max_steps": n})
    last = f"last-{n:08d}.safetensors"
    assert_same_weights(full.run_dir / last, resumed.run_dir / last)
    assert_same_weights(full.run_dir / ckpt.BEST, resumed.run_dir / ckpt.BEST)
    assert comparable(resumed.metrics) == comparable(full.metrics)
    a = ckpt.load_trainer_state(full.run_dir / ckpt.TRAINER)["averaging"]
    b = ckpt.load_trainer_state(resumed.run_dir / ckpt.TRAINER)["averaging"]
    assert a["count"] == b["count"] == n
    assert all(torch.equal(x, y) for x, y in zip(a["average"], b["average"], strict=True))


def _fingerprint(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_finetune_starts_a_new_run_from_the_best_weights_and_leaves_the_parent_alone(
        train_tiny: Any, tmp_path: Path) -> None:
    parent = train_tiny("parent", train__max_steps=4, train__optimizer="sgd", train__lr=0.5).run_dir
    before = _fingerprint(parent)
    new = tmp_path / "tuned"
    assert cli.main(["train", "--finetune", str(parent), "--out", str(new), "--max-steps", "3",
                     "--no-plot", "--samples", "0"]) == 0
    assert _fingerprint(parent) == before
    config = json.loads((new / ckpt.CONFIG).read_text())
    assert config["train"]["finetune_from"] == str(parent.resolve())
    assert config["train"]["optimizer"] == "asgd"
    assert json.loads((new / ckpt.RUN_INFO).read_text())["parent"] == str(parent.resolve())
    assert ckpt.load_trainer_state(new / ckpt.TRAINER)["averaging"]["count"] == 3


def test_finetune_refuses_resume_and_a_new_recipe(train_tiny: Any, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    parent = train_tiny("parent", train__max_steps=2).run_dir
    assert cli.main(["train", "--finetune", str(parent), "--resume", str(parent)]) == 2
    assert "--finetune starts a new run" in capsys.readouterr().err
    assert cli.main(["train", "--finetune", str(parent), "--out", str(tmp_path / "x"),
                     "--set", "model.hidden_size=8"]) == 2
    assert "only budget and train.* options" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
