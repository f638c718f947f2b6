"""RNNLanguageModel: every cell, both output layers, carried state, tied weights, perplexity."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
import torch
from torch import nn

from rnnlab.config import CELLS, ModelConfig, RunConfig, TrainConfig
from rnnlab.config_resolve import resolve_config
from rnnlab.errors import RnnlabError
from rnnlab.lm import evaluation
from rnnlab.lm.evaluation import eval_window, evaluate_stream, lm_metrics, perplexity
from rnnlab.models.cells import State, make_rnn
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.training.optim import make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

V = 37  # vocabulary size of the hand-made models
B, T = 3, 9


def _model(seed: int = 0, vocab: int = V, **fields: Any) -> RNNLanguageModel:
    fields = {"embedding_dim": 12, "hidden_size": 12, "num_layers": 2, "dropout": 0.0,
              "tie_weights": False, **fields}
    config = ModelConfig(**fields)
    config.validate()
    torch.manual_seed(seed)
    return RNNLanguageModel(config, vocab)


def _tokens(shape: tuple[int, ...], seed: int = 1, vocab: int = V) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _state_shapes(state: State) -> list[tuple[int, ...]]:
    parts = state if isinstance(state, tuple) else (state,)
    return [tuple(s.shape) for s in parts]


def _as_tuple(state: State) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


# --- every cell --------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_builds_runs_forward_and_nll_with_state_shapes_of_init_state(cell: str) -> None:
    model = _model(cell=cell).eval()
    tokens, targets = _tokens((B, T)), _tokens((B, T), seed=2)
    logits, state = model(tokens)
    assert logits.shape == (B, T, V)
    assert torch.isfinite(logits).all()
    # The state a forward pass returns has exactly the layout init_state promises, so a zero state
    # can stand in for "no state" anywhere.
    assert _state_shapes(state) == _state_shapes(model.init_state(B))
    assert isinstance(state, tuple) == (cell == "lstm")
    loss, state2 = model.nll(tokens, targets, model.init_state(B))
    assert loss.shape == () and math.isfinite(loss.item())
    assert _state_shapes(state2) == _state_shapes(state)
    # A zero state is the same as no state.
    logits0, _ = model(tokens, model.init_state(B))
    torch.testing.assert_close(logits0, logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_nll_gradients_reach_every_parameter(cell: str) -> None:
    model = _model(cell=cell).train()
    loss, _ = model.nll(_tokens((B, T)), _tokens((B, T), seed=2))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


# --- output layers -------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["softmax", "adaptive"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_nll_equals_cross_entropy_of_forward_logits(output: str, reduction: str) -> None:
    # cutoffs below the vocabulary size: the adaptive softmax has a head and two tail clusters.
    model = _model(output=output, cutoffs=[5, 20], hidden_size=32).eval()
    if output == "adaptive":
        assert model.adaptive is not None and model.decoder is None
    tokens, targets = _tokens((B, T)), _tokens((B, T), seed=2)
    logits, _ = model(tokens)
    by_hand = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                          reduction=reduction)
    loss, _ = model.nll(tokens, targets, reduction=reduction)
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-5)


def test_adaptive_logits_are_normalised_log_probabilities() -> None:
    model = _model(output="adaptive", cutoffs=[5, 20], hidden_size=32).eval()
    logits, _ = model(_tokens((B, T)))
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(B, T), rtol=0, atol=1e-5)


def test_adaptive_with_no_usable_cutoff_falls_back_to_a_full_softmax() -> None:
    model = _model(output="adaptive", cutoffs=[2000])  # every cutoff is beyond the vocabulary
    assert model.adaptive is None and model.decoder is not None


def test_onehot_input_runs_and_matches_nll() -> None:
    model = _model(input="onehot", embedding_dim=5).eval()
    assert model.embedding is None
    assert model.rnn.input_size == V  # the recurrent stack reads the one-hot vectors directly
    tokens, targets = _tokens((B, T)), _tokens((B, T), seed=2)
    logits, _ = model(tokens)
    assert logits.shape == (B, T, V)
    loss, _ = model.nll(tokens, targets)
    by_hand = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-6)


# --- carried state -------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_two_chunks_with_carried_state_equal_one_pass(cell: str) -> None:
    model = _model(cell=cell).eval()
    tokens = _tokens((B, 2 * T))
    full, full_state = model(tokens)
    first, state = model(tokens[:, :T])
    second, state = model(tokens[:, T:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=0, atol=1e-5)
    for a, b in zip(_as_tuple(state), _as_tuple(full_state), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # The same holds for nll (summed so the two halves add up).
    targets = _tokens((B, 2 * T), seed=3)
    total, _ = model.nll(tokens, targets, reduction="sum")
    a, s = model.nll(tokens[:, :T], targets[:, :T], reduction="sum")
    b, _ = model.nll(tokens[:, T:], targets[:, T:], s, reduction="sum")
    torch.testing.assert_close(a + b, total, rtol=1e-5, atol=1e-4)


def test_eval_mode_is_deterministic_and_train_mode_applies_dropout() -> None:
    model = _model(dropout=0.5, embedding_dropout=0.2)
    tokens = _tokens((B, T))
    model.eval()
    assert torch.equal(model(tokens)[0], model(tokens)[0])
    model.train()
    torch.manual_seed(0)
    a = model(tokens)[0]
    torch.manual_seed(1)
    b = model(tokens)[0]
    assert not torch.equal(a, b)


# --- dropout settings ----------------------------------------------------------------------


def _stack_io(model: RNNLanguageModel, tokens: torch.Tensor) -> dict[str, Any]:
    """One train-mode pass, recording the recurrent stack's input and output (B, T, ...).

    The stack's input leaves the input dropout and its output enters the output dropout, on the
    fast path and the plain one alike.
    """
    seen: dict[str, Any] = {}
    hooks = [
        model.input_dropout.register_forward_hook(
            lambda module, args, out: seen.setdefault("input", out.detach().clone())),
        model.output_dropout.register_forward_pre_hook(
            lambda module, args: seen.setdefault("output", args[0].detach().clone())),
    ]
    try:
        seen["features"] = model.train().features(tokens)[0].detach()
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        seen["encoded"] = model.encode(tokens)
        seen["undropped"] = model.rnn.eval()(seen["input"])[0]
    return seen


@pytest.mark.parametrize("where", ["input", "between", "output"])
def test_each_dropout_setting_acts_only_in_its_own_place(where: str) -> None:
    rates = {"input_dropout": 0.0, "dropout": 0.0, "output_dropout": 0.0}
    rates[{"input": "input_dropout", "between": "dropout", "output": "output_dropout"}[where]] = 0.3
    model = _model(hidden_size=64, **rates)
    assert model.config.dropout_rates() == (rates["input_dropout"], rates["dropout"],
                                            rates["output_dropout"])
    seen = _stack_io(model, _tokens((B, 2 * T)))
    changed = {
        "input": not torch.equal(seen["input"], seen["encoded"]),
        "between": not torch.allclose(seen["output"], seen["undropped"], rtol=0, atol=1e-5),
        "output": not torch.equal(seen["features"], seen["output"]),
    }
    assert changed == {name: name == where for name in changed}


def test_input_and_output_dropout_default_to_the_single_dropout() -> None:
    model = _model(dropout=0.35)
    assert model.config.input_dropout is None and model.config.output_dropout is None
    assert (model.input_dropout.p, model.rnn.dropout, model.output_dropout.p) == (0.35,) * 3


def test_a_config_written_before_the_separate_rates_builds_the_same_model() -> None:
    # A run directory's config.json from before input_dropout and output_dropout existed.
    written = RunConfig(model=ModelConfig(embedding_dim=12, hidden_size=12, dropout=0.35,
                                          tie_weights=False)).to_dict()
    del written["model"]["input_dropout"], written["model"]["output_dropout"]
    old = RunConfig.from_dict(written).validate().model
    assert old.dropout_rates() == (0.35, 0.35, 0.35)
    explicit = dataclasses.replace(old, input_dropout=0.35, output_dropout=0.35)
    tokens = _tokens((B, T))
    logits = []
    for config in (old, explicit):
        torch.manual_seed(0)
        model = RNNLanguageModel(config, V).train()
        assert (model.input_dropout.p, model.rnn.dropout, model.output_dropout.p) == (0.35,) * 3
        logits.append(model(tokens)[0])  # the same parameters and the same masks
    assert torch.equal(*logits)
    # Written again, the unset rates stay unset (null), so they keep following dropout.
    again = RunConfig.from_dict(json.loads(json.dumps(RunConfig(model=old).to_dict())))
    assert again.model.input_dropout is None and again.model.output_dropout is None


@pytest.mark.parametrize("key", ["model.input_dropout", "model.output_dropout"])
@pytest.mark.parametrize("value", ["1.0", "-0.1", "nan", "inf"])
def test_input_and_output_dropout_must_be_fractions(key: str, value: str) -> None:
    with pytest.raises(RnnlabError, match=rf"{key.replace('.', '[.]')} must be"):
        resolve_config(preset="synthetic", overrides={key: value})
    assert resolve_config(preset="synthetic", overrides={key: "none"}).model.dropout_rates() \
        == (0.1, 0.1, 0.1)


# --- tied weights --------------------------------------------------------------------------


@pytest.mark.parametrize(("embedding_dim", "hidden_size"), [(16, 16), (8, 24)])
def test_tied_weights_share_storage(embedding_dim: int, hidden_size: int) -> None:
    model = _model(embedding_dim=embedding_dim, hidden_size=hidden_size, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert model.decoder.weight.data_ptr() == model.embedding.weight.data_ptr()
    # A projection bridges the sizes only when they differ.
    assert (model.projection is not None) == (embedding_dim != hidden_size)
    if model.projection is not None:
        assert model.projection.weight.shape == (embedding_dim, hidden_size)
    # The shared matrix is one parameter: counted once and optimised once.
    names = [n for n, _ in model.named_parameters()]
    assert "embedding.weight" in names and "decoder.weight" not in names
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    params = optimizer.param_groups[0]["params"]
    assert len({id(p) for p in params}) == len(params) == len(list(model.parameters()))
    # After a training step the two still are one tensor.
    loss, _ = model.nll(_tokens((B, T)), _tokens((B, T), seed=2))
    loss.backward()
    optimizer.step()
    assert model.decoder.weight is model.embedding.weight
    logits, _ = model.eval()(_tokens((B, T)))
    assert logits.shape == (B, T, V)


def test_untied_weights_do_not_share_storage() -> None:
    model = _model(embedding_dim=16, hidden_size=16, tie_weights=False)
    assert model.decoder.weight is not model.embedding.weight
    assert model.decoder.weight.data_ptr() != model.embedding.weight.data_ptr()
    assert model.projection is None
    tied = _model(embedding_dim=16, hidden_size=16, tie_weights=True)
    assert tied.num_parameters() == model.num_parameters() - V * 16


# --- perplexity ----------------------------------------------------------------------------


def _nll_by_hand(model: RNNLanguageModel, ids: torch.Tensor) -> list[float]:
    """Per-target NLL of ``ids[1:]``: one token at a time from a zero state, batch size 1."""
    out, state = [], None
    with torch.no_grad():
        for t in range(ids.numel() - 1):
            logits, state = model(ids[t].view(1, 1), state)
            out.append(-float(logits[0, 0].log_softmax(-1)[ids[t + 1]]))
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru"])  # a (h, c) tuple state and a plain one
@pytest.mark.parametrize("output", ["softmax", "adaptive"])
@pytest.mark.parametrize("eval_rows", [1, 12, 4096])  # windows of bptt, of 12 // B, one window
def test_perplexity_is_exp_of_mean_nll_computed_by_hand(
    monkeypatch, output: str, cell: str, eval_rows: int
) -> None:
    monkeypatch.setattr(evaluation, "EVAL_ROWS", eval_rows)
    model = _model(output=output, cutoffs=[5, 20], hidden_size=32, cell=cell).eval()
    n = 53  # 52 targets: batch 3 leaves a one-target tail, batch 7 a three-target tail
    ids = _tokens((n,), seed=5)
    per_token = _nll_by_hand(model, ids)
    assert len(per_token) == n - 1
    for batch_size in (1, 3, 7):
        total, count = evaluate_stream(model, ids, batch_size, bptt=4)
        assert count == n - 1, f"batch {batch_size} must count every target exactly once"
        # Batch size B reads B contiguous rows of L targets, each from a zero state; the tail
        # past B * L continues the last row. So the sum is a plain loop over those segments.
        length = (n - 1) // batch_size
        starts = [b * length for b in range(batch_size)] + [n - 1]
        expected = sum(
            sum(_nll_by_hand(model, ids[start : end + 1]))
            for start, end in zip(starts[:-1], starts[1:], strict=True)
        )
        assert total == pytest.approx(expected, rel=1e-5)
        if batch_size == 1:  # one stream: exactly the whole-sequence loop
            assert total == pytest.approx(sum(per_token), rel=1e-5)
            metrics = lm_metrics(total, count)
            mean = sum(per_token) / len(per_token)
            assert metrics["loss"] == pytest.approx(mean, rel=1e-5)
            assert metrics["ppl"] == pytest.approx(math.exp(mean), rel=1e-5)
            assert metrics["bits"] == pytest.approx(mean / math.log(2), rel=1e-5)
            assert metrics["tokens"] == n - 1


def test_eval_window_is_bounded_by_rows_and_by_the_logits_budget() -> None:
    assert eval_window(35, 10, 10_000) == 335  # 2**25 // 10,000 = 3,355 rows of logits
    assert eval_window(35, 10, 65) == 409  # a character vocabulary: the 4,096-row cap
    assert eval_window(35, 10, 2_000_000) == 35  # 16 rows of a huge vocabulary: never below bptt
    assert eval_window(35, 1, 10_000) == 3355


def test_evaluate_stream_clamps_batch_size_to_the_stream() -> None:
    model = _model().eval()
    ids = _tokens((4,))
    total, count = evaluate_stream(model, ids, batch_size=10, bptt=35)
    # Three targets allow at most three streams, each one target long from a zero state.
    assert count == 3
    expected = sum(sum(_nll_by_hand(model, ids[i : i + 2])) for i in range(3))
    assert total == pytest.approx(expected, rel=1e-5)


def test_perplexity_caps_overflow() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(42.0)) == pytest.approx(42.0)
    assert perplexity(10_000.0) == float("inf")



def test_lstm_forget_gates_start_open() -> None:
    """A forget-gate bias of 1 (in the input bias; the hidden bias adds 0) in every layer."""
    rnn = make_rnn("lstm", 8, 16, 2, bidirectional=True)
    for name, bias in rnn.named_parameters():
        if name.startswith("bias_"):
            expected = 1.0 if name.startswith("bias_ih") else 0.0
            assert torch.all(bias[16:32] == expected), name
            assert not torch.all(bias[:16] == expected), name  # the other gates are left as is
