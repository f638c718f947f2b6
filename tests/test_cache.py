"""The neural cache: lambda 0 is the model, a repeated rare word gains, only the past is cached,
and sampling with the cache mixes the prompt's history into the next token's distribution."""

from __future__ import annotations

import pytest
import torch

from rnnlab.config import ModelConfig
from rnnlab.generation import SampleConfig, generate_ids
from rnnlab.lm.adaptive import adaptive_nll
from rnnlab.lm.cache import CacheSettings, NeuralCache, cache_probs
from rnnlab.lm.dynamic import DynamicSettings, gradient_stats
from rnnlab.models.language_model import RNNLanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")

V = 30


@pytest.fixture(scope="module")
def model() -> RNNLanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=8, hidden_size=12, num_layers=1, dropout=0.0,
                         tie_weights=False)
    return RNNLanguageModel(config, V).eval()


def _stream(n: int = 150, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def test_lambda_zero_scores_exactly_as_the_model(model) -> None:
    ids = _stream()
    static = adaptive_nll(model, ids, segment=16, per_token=True)
    cached = adaptive_nll(model, ids, cache=CacheSettings(window=50, theta=1.0, lam=0.0),
                          segment=16, per_token=True)
    assert torch.equal(cached["token_nll"], static["token_nll"])


def test_a_repeated_rare_word_becomes_more_likely(model) -> None:
    ids = _stream(120, seed=2)
    rare = 29
    ids[ids == rare] = 0
    ids[[95, 110]] = rare
    # theta 0: the pointer spreads evenly over the window, whatever the (untrained) states.
    settings = CacheSettings(window=20, theta=0.0, lam=0.5)
    static = adaptive_nll(model, ids, segment=16, per_token=True)["token_nll"]
    cached = adaptive_nll(model, ids, cache=settings, segment=16, per_token=True)["token_nll"]
    first, again = 95 - 1, 110 - 1  # target index t predicts ids[t + 1]
    assert cached[first] > static[first]  # not cached: only (1 - lambda) p_model
    assert cached[again] < static[again]


def test_the_pointer_follows_the_most_similar_past_state() -> None:
    memory = NeuralCache(CacheSettings(window=10, theta=5.0, lam=0.5))
    states = torch.eye(4)  # (T, D): the last state repeats the first one
    states = torch.cat([states, states[:1]])
    targets = torch.tensor([9, 1, 2, 3, 9])  # after state 0 came the rare word 9
    model_lp = torch.full((5,), -3.0)
    mixed = memory.mix(states, targets, model_lp)
    assert mixed[4] > -1.0  # p_cache(9) near 1: far above the model's exp(-3)


def test_the_cache_holds_only_the_past(model) -> None:
    prefix = 70
    a, b = _stream(), _stream()
    b[prefix + 1 :] = (b[prefix + 1 :] + 1) % V
    settings = CacheSettings(window=40, theta=1.0, lam=0.3)
    nll_a = adaptive_nll(model, a, cache=settings, segment=16, per_token=True)["token_nll"]
    nll_b = adaptive_nll(model, b, cache=settings, segment=16, per_token=True)["token_nll"]
    assert torch.equal(nll_a[:prefix], nll_b[:prefix])
    # Read in one segment or many, the same scores: positions see only earlier pairs.
    whole = adaptive_nll(model, a, cache=settings, segment=1000, per_token=True)["token_nll"]
    assert torch.allclose(whole, nll_a, atol=1e-5)


def test_the_first_token_of_a_stream_is_scored_by_the_model_alone() -> None:
    memory = NeuralCache(CacheSettings(window=5, theta=1.0, lam=0.5))
    features, targets = torch.randn(3, 4), torch.tensor([1, 1, 2])
    model_lp = torch.log(torch.tensor([0.2, 0.2, 0.2]))
    mixed = memory.mix(features, targets, model_lp)
    assert mixed[0] == model_lp[0]  # nothing cached yet
    assert mixed[1] > model_lp[1]  # the pair (h_0, 1) predicts token 1 again
    assert mixed[2] < model_lp[2]  # token 2 was never seen: only (1 - lambda) p_model


def test_cache_and_dynamic_evaluation_combine_without_reading_ahead(model) -> None:
    stats = gradient_stats(model, _stream(100, seed=4), segment=8)
    settings = DynamicSettings(lr=3e-3, segment=8)
    a, b = _stream(), _stream()
    b[61:] = (b[61:] + 1) % V
    cache = CacheSettings(window=30, theta=1.0, lam=0.2)
    both_a = adaptive_nll(model, a, dynamic=settings, stats=stats, cache=cache, per_token=True)
    both_b = adaptive_nll(model, b, dynamic=settings, stats=stats, cache=cache, per_token=True)
    assert torch.equal(both_a["token_nll"][:60], both_b["token_nll"][:60])
    alone = adaptive_nll(model, a, dynamic=settings, stats=stats, per_token=True)
    off = adaptive_nll(model, a, dynamic=settings, stats=stats, per_token=True,
                       cache=CacheSettings(window=30, theta=1.0, lam=0.0))
    assert torch.equal(off["token_nll"], alone["token_nll"])
    assert not torch.equal(both_a["token_nll"], alone["token_nll"])


def test_cache_probs_is_a_distribution_that_favours_cached_tokens() -> None:
    probs = torch.full((2, 6), 1 / 6)
    keys = torch.randn(2, 3, 4)
    values = torch.tensor([[5, 5, 5], [1, 2, 3]])
    mixed = cache_probs(probs, keys[:, 0], keys, values, CacheSettings(window=3, lam=0.5))
    assert torch.allclose(mixed.sum(-1), torch.ones(2))
    assert mixed[0, 5] == pytest.approx(0.5 / 6 + 0.5)
    empty = cache_probs(probs, keys[:, 0], keys[:, :0], values[:, :0], CacheSettings())
    assert torch.equal(empty, probs)


def test_sampling_with_the_cache_repeats_the_prompt_more_often(model) -> None:
    prompt = [7, 3, 7, 3, 7, 3, 7, 3, 7]
    counts = {}
    for cache in (False, True):
        config = SampleConfig(max_tokens=30, num_samples=8, seed=1, cache=cache,
                              cache_theta=0.0, cache_lambda=0.9).validate()
        ids = torch.stack(list(generate_ids(model, prompt, config)), dim=1)
        counts[cache] = int(((ids == 7) | (ids == 3)).sum())
    assert counts[True] > counts[False]
