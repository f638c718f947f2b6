"""AWD-LSTM's pieces (Merity et al., 2017), each on its own: weight drop, AR/TAR, layers of their
own sizes, learning rate by window length, presets, and automatic precision."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from rnnlab import fast, runtime
from rnnlab.config import ModelConfig, RunConfig
from rnnlab.config_resolve import resolve_config
from rnnlab.errors import RnnlabError
from rnnlab.fast import stack
from rnnlab.generation import SampleConfig, generate_ids
from rnnlab.lm.evaluation import evaluate_stream
from rnnlab.models.cells import LayerStack, detach_state, select_state
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.models.regularization import activation_regularization, weight_drop
from rnnlab.training.trainer import Callback, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 30


@pytest.fixture(autouse=True)
def _switch_from_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RNNLAB_FAST", raising=False)


def _model(seed: int = 0, **fields: Any) -> RNNLanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{"embedding_dim": 8, "hidden_size": 12, "num_layers": 2,
                            "dropout": 0.0, "tie_weights": False, **fields})
    return RNNLanguageModel(config, VOCAB)


def _tokens(batch: int = 3, steps: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, steps), generator=torch.Generator().manual_seed(5))


# --- weight drop ---------------------------------------------------------------------------------


def test_weight_drop_masks_only_hidden_to_hidden_matrices_scaled_by_the_kept_fraction() -> None:
    rnn = _model(weight_drop=0.5).rnn
    dropped = weight_drop(rnn, 0.5)
    assert sorted(dropped) == ["weight_hh_l0", "weight_hh_l1"]
    for name, tensor in dropped.items():
        raw = rnn.get_parameter(name)
        kept = tensor != 0
        assert 0 < kept.float().mean() < 1
        torch.testing.assert_close(tensor[kept], raw[kept] * 2)
    assert weight_drop(rnn, 0.0) == {}


@pytest.mark.parametrize("on", [True, False], ids=["fast", "plain"])
def test_weight_drop_uses_one_mask_for_every_step_of_a_forward(on: bool) -> None:
    model = _model(weight_drop=0.5, num_layers=1).train()
    tokens = _tokens()
    torch.manual_seed(11)
    with fast.enabled_as(on):
        out, _ = model.recurrent(tokens)
    # The same draw by hand: the whole window through nn.LSTM with the dropped matrix in place.
    torch.manual_seed(11)
    dropped = weight_drop(model.rnn, 0.5)["weight_hh_l0"]
    reference = copy.deepcopy(model.rnn)
    with torch.no_grad():
        reference.weight_hh_l0.copy_(dropped)
    expected, _ = reference(model.encode(tokens))
    torch.testing.assert_close(out, expected)


def test_weight_drop_is_off_in_evaluation_and_keeps_the_saved_names() -> None:
    dropping, plain = _model(weight_drop=0.5), _model(weight_drop=0.0)
    assert dropping.state_dict().keys() == plain.state_dict().keys()
    tokens = _tokens()
    dropping.eval()
    plain.eval()
    torch.testing.assert_close(dropping(tokens)[0], plain(tokens)[0])
    dropping.train()
    loss, _ = dropping.nll(tokens, tokens)
    loss.backward()
    assert dropping.rnn.weight_hh_l0.grad is not None  # the raw matrix learns through the mask


def _nn_order_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """(B, T, H) dropout with ``nn.LSTM``'s mask: a (T, B, H) float Bernoulli draw."""
    noise = torch.empty(x.shape[1], x.shape[0], x.shape[2]).bernoulli_(1 - p).div_(1 - p)
    return x * noise.transpose(0, 1)


def test_weight_drop_trains_the_same_with_the_fast_stack_on_and_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "dropout", _nn_order_dropout)
    tokens = _tokens()
    losses, grads = [], []
    for on in (True, False):
        model = _model(weight_drop=0.4, dropout=0.3).train()
        torch.manual_seed(3)
        with fast.enabled_as(on):
            loss, _ = model.nll(tokens, tokens)
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.rnn.weight_hh_l1.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


# --- AR and TAR ----------------------------------------------------------------------------------


def test_activation_regularization_by_hand() -> None:
    raw = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [3.0, 2.0]]])  # (B=1, T=3, H=2)
    dropped = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]]])
    # AR: 2 * mean(4, 0, 0, 0, 0, 16) = 20 / 3. TAR: 1 * mean(4, 4, 0, 0) = 2.
    torch.testing.assert_close(activation_regularization(raw, dropped, 2.0, 0.0),
                               torch.tensor(20 / 3))
    torch.testing.assert_close(activation_regularization(raw, dropped, 0.0, 1.0), torch.tensor(2.0))
    torch.testing.assert_close(activation_regularization(raw, dropped, 2.0, 1.0),
                               torch.tensor(20 / 3 + 2))


def test_regularized_nll_adds_ar_and_tar_on_the_last_layer_to_the_nll_only_in_training() -> None:
    model = _model(num_layers=2, dropout=0.0).train()  # no dropout: raw and dropped agree
    tokens = _tokens()
    plain, _ = model.nll(tokens, tokens)
    raw, _ = model.recurrent(tokens)
    regularized, _ = model.regularized_nll(tokens, tokens, None, 2.0, 1.0)
    expected = plain + activation_regularization(raw, raw, 2.0, 1.0)
    torch.testing.assert_close(regularized, expected)
    torch.testing.assert_close(model.regularized_nll(tokens, tokens)[0], plain)


# --- layers of their own sizes -------------------------------------------------------------------


def _sized(**fields: Any) -> RNNLanguageModel:
    return _model(num_layers=3, hidden_sizes=[12, 10, 8], embedding_dim=8, tie_weights=True,
                  **fields)


def test_per_layer_sizes_build_a_layer_stack_whose_last_layer_feeds_the_tied_decoder() -> None:
    model = _sized()
    assert isinstance(model.rnn, LayerStack)
    assert [layer.hidden_size for layer in model.rnn.layers] == [12, 10, 8]
    assert model.projection is None  # the last size is the embedding size
    assert model.decoder.weight is model.embedding.weight
    logits, state = model(_tokens(batch=3))
    assert logits.shape == (3, 7, VOCAB)
    assert isinstance(state, list)
    assert [tuple(h.shape) for h, _ in state] == [(1, 3, 12), (1, 3, 10), (1, 3, 8)]
    zeros = model.init_state(3)
    assert [tuple(c.shape) for _, c in zeros] == [(1, 3, 12), (1, 3, 10), (1, 3, 8)]
    rows = select_state(detach_state(state), slice(1, 2))
    assert [tuple(h.shape) for h, _ in rows] == [(1, 1, 12), (1, 1, 10), (1, 1, 8)]


def test_per_layer_sizes_must_name_every_layer() -> None:
    with pytest.raises(RnnlabError, match="model.hidden_sizes must be 3"):
        ModelConfig(num_layers=3, hidden_sizes=[12, 8]).validate()


@pytest.mark.parametrize("on", [True, False], ids=["fast", "plain"])
def test_per_layer_sizes_train_evaluate_and_generate(on: bool) -> None:
    model = _sized(weight_drop=0.5, dropout=0.2)
    tokens = _tokens()
    with fast.enabled_as(on):
        model.train()
        loss, state = model.regularized_nll(tokens, tokens, None, 2.0, 1.0)
        loss.backward()
        model.regularized_nll(tokens, tokens, detach_state(state))
        total, count = evaluate_stream(model, torch.arange(50) % VOCAB, 3, 5, "cpu")
        sample = SampleConfig(max_tokens=5, num_samples=2, seed=1)
        ids = torch.stack(list(generate_ids(model, [1, 2], sample)))
    assert count == 49 and total > 0
    assert ids.shape == (5, 2)


def test_the_task_saves_and_restores_a_per_layer_state(make_tiny_overrides: Callable) -> None:
    from rnnlab.lm.task import build_lm_task

    config = resolve_config(preset="synthetic", overrides=make_tiny_overrides(**{
        "model__num_layers": 2, "model__hidden_sizes": "12,8", "model__embedding_dim": 8,
        "data__synthetic_tokens": 2000}))
    task = build_lm_task(config, torch.device("cpu"))
    batch = next(iter(task.batches(0)))
    task.train_loss(batch)
    saved = task.state_dict()
    before = task.state
    task.load_state_dict(saved)
    assert len(task.state) == 2
    for (h, c), (h0, c0) in zip(task.state, before, strict=True):
        assert torch.equal(h, h0) and torch.equal(c, c0)


# --- learning rate by window length --------------------------------------------------------------


class _Rates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_step(self, trainer: Trainer, loss: float) -> None:
        self.rates.append(trainer.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("scale", [True, False])
def test_scale_lr_by_window_gives_each_step_lr_times_its_window_over_bptt(
        make_tiny_overrides: Callable, tmp_path: Any, scale: bool) -> None:
    from rnnlab.lm.task import build_lm_task

    config = resolve_config(preset="synthetic", overrides=make_tiny_overrides(**{
        "data__variable_bptt": True, "train__scale_lr_by_window": scale, "train__max_steps": 6,
        "train__optimizer": "sgd", "train__lr": 1.0, "data__synthetic_tokens": 4000}))
    task = build_lm_task(config, torch.device("cpu"))
    lengths = [inputs.shape[1] for inputs, _ in task.batches(0)][:6]
    rates = _Rates()
    Trainer(task, config, tmp_path, torch.device("cpu"), [rates]).fit()
    expected = [n / config.data.bptt if scale else 1.0 for n in lengths]
    assert rates.rates == pytest.approx(expected)
    assert len(set(lengths)) > 1  # windows of several lengths were seen


# --- presets and precision -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["awd-lstm-ptb", "awd-lstm-wt2"])
def test_awd_presets_build_the_papers_model(name: str) -> None:
    config = resolve_config(preset=name)
    with torch.device("meta"):  # the structure only: no memory for 24M weights
        model = RNNLanguageModel(config.model, 100)
    assert [layer.hidden_size for layer in model.rnn.layers] == [1150, 1150, 400]
    assert model.projection is None and model.decoder.weight is model.embedding.weight
    assert (config.model.weight_drop, config.train.ar_alpha, config.train.tar_beta) == (0.5, 2, 1)
    assert config.train.optimizer == "nt-asgd" and config.data.bptt == 70


def test_old_configs_load_with_every_awd_piece_off() -> None:
    config = RunConfig.from_dict({"model": {"hidden_size": 16}, "train": {"optimizer": "sgd"}})
    assert config.model.weight_drop == 0 and config.model.hidden_sizes is None
    assert (config.train.ar_alpha, config.train.tar_beta) == (0, 0)
    assert not config.train.scale_lr_by_window and config.train.precision == "fp32"


def test_awd_keys_are_refused_for_models_read_line_by_line_or_classifiers() -> None:
    with pytest.raises(RnnlabError, match="model.weight_drop is for a language model read as a"):
        resolve_config(preset="names", overrides={"model.weight_drop": 0.3})
    with pytest.raises(RnnlabError, match="train.ar_alpha is for --task lm only"):
        resolve_config(preset="imdb-bilstm", overrides={"train.ar_alpha": 2.0})


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(
        monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else None
    assert runtime.autocast_dtype("auto", torch.device("cpu")) == expected
    assert runtime.autocast_dtype("fp32", torch.device("cpu")) is None


def test_a_run_with_every_awd_piece_trains_resumes_loads_and_samples(train_tiny: Any) -> None:
    import rnnlab

    awd = {"model__num_layers": 2, "model__hidden_sizes": "24,16", "model__embedding_dim": 16,
           "model__tie_weights": True, "model__weight_drop": 0.5, "model__dropout": 0.2,
           "train__ar_alpha": 2.0, "train__tar_beta": 1.0, "train__optimizer": "nt-asgd",
           "train__nonmono": 1, "train__lr": 1.0, "train__scale_lr_by_window": True,
           "data__variable_bptt": True, "data__synthetic_tokens": 4000, "train__epochs": 3,
           "train__eval_every": 2}
    part = train_tiny(train__max_steps=4, **awd)
    result = rnnlab.resume(part.run_dir, {"train.max_steps": 8})
    assert result.steps == 8
    lm = rnnlab.LanguageModel.load(result.run_dir)
    assert lm.generate(max_tokens=4)
    assert lm.evaluate("valid")["ppl"] > 1
