"""The fast paths switched on and off give the same training, evaluation and generation.

Each fast path also has its own test against its reference (test_softmax_loss, test_stepper,
test_optim, test_regularization); here whole models train, evaluate and sample both ways.

The fast stack's dropout between layers draws a different mask than ``nn.LSTM``'s, so the models
with that dropout train here with the fast stack's mask drawn as ``nn.LSTM`` draws it (one float
Bernoulli sample per element, time-major); every other random draw is the same on both paths.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnlab import checkpoint as ckpt
from rnnlab import fast
from rnnlab.config import ModelConfig, RunConfig, TrainConfig
from rnnlab.fast import stack
from rnnlab.generation import SampleConfig, generate_ids
from rnnlab.lm.evaluation import evaluate_stream
from rnnlab.models.cells import detach_state
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.training.optim import clipped_step, grad_norm, make_optimizer
from rnnlab.training.trainer import Callback

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _switch_from_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare both paths even in a process started with ``RNNLAB_FAST=0``."""
    monkeypatch.delenv("RNNLAB_FAST", raising=False)


VOCAB, B, T, STEPS = 40, 4, 6, 4

MODELS: dict[str, dict[str, Any]] = {
    "word-lstm-dropout-tied": {"cell": "lstm", "dropout": 0.3, "embedding_dropout": 0.1,
                               "tie_weights": True},
    "gru": {"cell": "gru", "dropout": 0.0, "tie_weights": False},
    "adaptive-softmax": {"cell": "lstm", "dropout": 0.2, "output": "adaptive",
                         "cutoffs": [10, 20], "tie_weights": False},
    "char-onehot": {"cell": "lstm", "input": "onehot", "input_dropout": 0.0, "dropout": 0.25,
                    "tie_weights": False},
}
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd-clipped": {"optimizer": "sgd", "lr": 1.0, "clip": 0.25},
    "adam-clipped": {"optimizer": "adam", "lr": 3e-3, "clip": 0.5},
}


def _nn_order_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """(B, T, H) dropout with ``nn.LSTM``'s mask: a (T, B, H) float Bernoulli draw."""
    noise = torch.empty(x.shape[1], x.shape[0], x.shape[2]).bernoulli_(1 - p).div_(1 - p)
    return x * noise.transpose(0, 1)


def _model(name: str) -> RNNLanguageModel:
    torch.manual_seed(0)
    options = {"embedding_dim": 16, "hidden_size": 16, "num_layers": 2, **MODELS[name]}
    return RNNLanguageModel(ModelConfig(**options), VOCAB)


def _stream(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


def _train(model_name: str, optimizer_name: str, on: bool
           ) -> tuple[list[float], RNNLanguageModel]:
    """``STEPS`` truncated-BPTT steps as the Trainer takes them; the losses and the model."""
    model = _model(model_name)
    config = TrainConfig(**OPTIMIZERS[optimizer_name])
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    streams = _stream(B * (STEPS * T + 1), seed=1).view(B, -1)  # (B, STEPS * T + 1)
    torch.manual_seed(2)  # the dropout masks
    losses, state = [], None
    with fast.enabled_as(on):
        model.train()
        for k in range(STEPS):
            window = streams[:, k * T : (k + 1) * T + 1]
            loss, state = model.nll(window[:, :-1], window[:, 1:], detach_state(state))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            clipped_step(optimizer, grads, float(grad_norm(grads)), config.clip, optimizer.step)
            losses.append(float(loss.detach()))
    return losses, model


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_training_is_the_same_with_the_fast_paths_on_and_off(
        model_name: str, optimizer_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "dropout", _nn_order_dropout)
    fast_losses, fast_model = _train(model_name, optimizer_name, on=True)
    plain_losses, plain_model = _train(model_name, optimizer_name, on=False)
    assert fast_losses == pytest.approx(plain_losses, rel=1e-5)
    assert fast_losses[-1] != fast_losses[0]  # the weights did move
    # Adam divides by each gradient's running size, so a rounding difference in a near-zero
    # gradient can move its weight by a visible fraction of the learning rate.
    for (name, got), want in zip(fast_model.named_parameters(), plain_model.parameters(),
                                 strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_evaluation_and_generation_are_the_same_with_the_fast_paths_on_and_off(
        model_name: str) -> None:
    _, model = _train(model_name, "adam-clipped", on=True)  # weights away from their init
    ids = _stream(301, seed=3)
    sample = SampleConfig(max_tokens=25, num_samples=3, seed=11)
    results = {}
    for on in (True, False):
        with fast.enabled_as(on):
            total, count = evaluate_stream(model, ids, batch_size=3, bptt=T)
            tokens = torch.stack(list(generate_ids(model, [1, 5, 7], sample)))  # (25, 3)
        results[on] = total / count, tokens
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    assert torch.equal(results[True][1], results[False][1])


def test_the_environment_turns_the_fast_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    with fast.enabled_as(True):
        monkeypatch.setenv("RNNLAB_FAST", "0")
        assert not fast.enabled()
        monkeypatch.setenv("RNNLAB_FAST", "1")
        assert fast.enabled()
        with fast.enabled_as(False):
            assert not fast.enabled()
        assert fast.enabled()


def test_a_run_applies_train_fast_while_it_lasts(train_tiny, tmp_path) -> None:
    seen = []

    class RecordSwitch(Callback):
        def on_train_start(self, trainer) -> None:
            seen.append(fast.enabled())

    with fast.enabled_as(True):
        train_tiny(callbacks=[RecordSwitch()], train__fast=False, train__max_steps=2)
        assert seen == [False]
        assert fast.enabled()  # the process setting is back once the run ends
    assert ckpt.load_config(tmp_path / "run").train.fast is False


def test_a_config_written_without_train_fast_loads_with_the_fast_paths_on() -> None:
    raw = RunConfig().to_dict()
    del raw["train"]["fast"]
    assert RunConfig.from_dict(raw).train.fast is True


@pytest.mark.parametrize("env", ["1", "0"])
def test_the_train_command_keeps_freed_memory_when_the_fast_paths_are_on(
        env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from rnnlab import cli

    calls = []
    monkeypatch.setattr(fast, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv("RNNLAB_FAST", env)
    assert cli.main(["train", "--set", "train.no_such_key=1"]) == 2  # stops after the setting
    assert calls == ([1] if env == "1" else [])


def test_training_from_the_library_leaves_mallocs_settings_alone(
        train_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(fast, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(fast.memory, "keep_freed_memory", lambda: calls.append(1) or True)
    train_tiny(train__max_steps=1)
    assert calls == []
