"""Sampling: seeds, greedy decoding, top-k, top-p, banned ids, EOS, prompts, batched samples."""

from __future__ import annotations

import math

import pytest
import torch

from rnnlab import generation
from rnnlab.api import LanguageModel
from rnnlab.config import ModelConfig, RunConfig
from rnnlab.data.vocab import EOS, UNK, Vocab
from rnnlab.errors import RnnlabError
from rnnlab.generation import (
    SampleConfig,
    encode_prompt,
    generate_ids,
    render,
    sample_next,
    sample_rows,
)
from rnnlab.models.language_model import RNNLanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = [f"w{i}" for i in range(30)]


def _lm(cell: str = "lstm", seed: int = 0) -> LanguageModel:
    vocab = Vocab([UNK, EOS, *WORDS], level="word")
    config = RunConfig()
    config.model = ModelConfig(cell=cell, embedding_dim=16, hidden_size=16, num_layers=2,
                               dropout=0.0, tie_weights=False)
    torch.manual_seed(seed)
    model = RNNLanguageModel(config.model, len(vocab))
    with torch.no_grad():  # sharper than uniform init so greedy and sampled paths differ
        model.decoder.weight.mul_(30)
    return LanguageModel(model, vocab, config)


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return _lm()


# --- seeds and greedy ----------------------------------------------------------------------


def test_same_seed_same_samples_different_seed_different(lm: LanguageModel) -> None:
    a = lm.generate("w1 w2", 30, seed=1)
    assert a == lm.generate("w1 w2", 30, seed=1)
    assert a != lm.generate("w1 w2", 30, seed=2)
    assert len(a) == 1 and len(a[0].split()) >= 1


def test_sampling_does_not_touch_the_global_rng(lm: LanguageModel) -> None:
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    lm.generate("w1", 10, seed=3)
    assert torch.equal(torch.rand(3), before)


def _greedy_by_hand(model: RNNLanguageModel, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding that re-reads the whole sequence at every step (no carried state)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_temperature_zero_is_greedy(cell: str) -> None:
    lm = _lm(cell)
    prompt = lm.vocab.encode(["w3", "w4", "w5"])
    config = SampleConfig(max_tokens=12, temperature=0.0, seed=1)
    steps = [int(s[0]) for s in generate_ids(lm.model, prompt, config)]
    assert steps == _greedy_by_hand(lm.model, prompt, 12)
    # The seed does not matter to greedy decoding.
    assert lm.generate("w3 w4 w5", 12, temperature=0.0, seed=1) == \
        lm.generate("w3 w4 w5", 12, temperature=0.0, seed=99)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_incremental_decoding_equals_re_encoding(cell: str, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    # generate_ids feeds each new token as one step with the carried state; the logits it samples
    # from must be those of one full forward pass over prompt + generated tokens.
    lm = _lm(cell)
    seen: list[torch.Tensor] = []

    def recording_sample_next(logits: torch.Tensor, **options: object) -> torch.Tensor:
        seen.append(logits.clone())
        return sample_next(logits, **options)

    monkeypatch.setattr(generation, "sample_next", recording_sample_next)
    prompt = lm.vocab.encode(["w7", "w8", "w9", "w10"])
    config = SampleConfig(max_tokens=15, seed=4, num_samples=2)
    steps = list(generate_ids(lm.model, prompt, config))
    assert len(seen) == len(steps) == 15
    for row in range(2):
        generated = [int(s[row]) for s in steps]
        with torch.no_grad():
            full, _ = lm.model(torch.tensor([prompt + generated]))
        # Position len(prompt) - 1 + t predicts the t-th generated token.
        expected = full[0, len(prompt) - 1 : -1]
        used = torch.stack([logits[row] for logits in seen])
        torch.testing.assert_close(used, expected, rtol=0, atol=1e-5)


def test_rows_of_several_requests_sampled_together_equal_each_sampled_alone() -> None:
    """Three requests' rows stacked (1, 3 and 2 rows; temperatures 1, 0.6, 1.7) give each
    request the ids that ``sample_next`` gives it alone with the same seed."""
    counts, temperatures, seeds = [1, 3, 2], [1.0, 0.6, 1.7], [5, 6, 7]
    logits = torch.randn(sum(counts), 1000, generator=torch.Generator().manual_seed(3)) * 4
    for _ in range(20):
        together = sample_rows(logits, temperatures, counts,
                               [torch.Generator().manual_seed(s) for s in seeds])
        alone = torch.cat([
            sample_next(part, temperature=t, generator=torch.Generator().manual_seed(s))
            for part, t, s in zip(logits.split(counts), temperatures, seeds, strict=True)])
        assert together.tolist() == alone.tolist()
        seeds = [s + 10 for s in seeds]
    # The temperatures matter: the same draws at temperature 1 everywhere differ somewhere.
    flat = sample_rows(logits, [1.0] * 3, counts, [torch.Generator().manual_seed(s) for s in seeds])
    hot = sample_rows(logits, temperatures, counts,
                      [torch.Generator().manual_seed(s) for s in seeds])
    assert flat.tolist() != hot.tolist()


# --- filters -------------------------------------------------------------------------------


def _draws(logits: torch.Tensor, n: int = 4000, **options: object) -> torch.Tensor:
    rows = logits.expand(n, -1)
    return sample_next(rows, generator=torch.Generator().manual_seed(0), **options)


def test_top_k_never_leaves_the_k_best() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(1))
    for k in (1, 3, 10):
        best = set(torch.topk(logits[0], k).indices.tolist())
        seen = set(_draws(logits, top_k=k).tolist())
        assert seen <= best
        if k > 1:
            assert len(seen) > 1  # the filter keeps k ids, not just the argmax
    assert set(_draws(logits, top_k=1).tolist()) == {int(logits.argmax())}


def test_top_p_never_leaves_the_nucleus() -> None:
    probs = torch.tensor([[0.05, 0.4, 0.02, 0.3, 0.15, 0.05, 0.03]])
    logits = probs.log()
    # Sorted: 0.4 (id 1), 0.3 (id 3), 0.15 (id 4), ... ; the nucleus is the smallest prefix
    # whose mass reaches p.
    cases = {0.3: {1}, 0.6: {1, 3}, 0.75: {1, 3, 4}, 0.92: {1, 3, 4, 0, 5}}
    for top_p, nucleus in cases.items():
        seen = set(_draws(logits, top_p=top_p).tolist())
        assert seen == nucleus, top_p
    assert set(_draws(logits, top_p=1.0).tolist()) == set(range(7))


def test_top_p_renormalises_inside_the_nucleus() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    draws = _draws(logits, n=20_000, top_p=0.7)
    share = float((draws == 0).float().mean())
    assert share == pytest.approx(0.5 / 0.8, abs=0.02)


def test_banned_ids_never_appear() -> None:
    logits = torch.randn(1, 20, generator=torch.Generator().manual_seed(2))
    banned = torch.topk(logits[0], 3).indices  # ban the likeliest ones: the hardest case
    for options in ({}, {"top_k": 4}, {"top_p": 0.5}, {"temperature": 0.0}, {"temperature": 3.0}):
        seen = set(_draws(logits, banned=banned, **options).tolist())
        assert not seen & set(banned.tolist()), options
    greedy = sample_next(logits, temperature=0.0, banned=banned)
    assert int(greedy) == int(torch.topk(logits[0], 4).indices[-1])


def test_skip_option_bans_tokens_in_generate(lm: LanguageModel) -> None:
    skip = [f"w{i}" for i in range(0, 30, 2)] + [UNK]
    text = lm.generate("w1", 200, skip=skip, seed=3)[0]
    assert not set(text.split()) & set(skip)


def test_temperature_zero_argmax_per_row() -> None:
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))


# --- EOS, prompts, batches -----------------------------------------------------------------


def test_stop_at_eos_stops() -> None:
    lm = _lm()
    eos = lm.vocab.stoi[EOS]
    with torch.no_grad():
        lm.model.decoder.bias[eos] = 50.0  # the model now always ends the sentence at once
    config = SampleConfig(max_tokens=20, stop_at_eos=True, seed=1, num_samples=2)
    steps = list(generate_ids(lm.model, [2, 3], config, eos_id=eos))
    assert len(steps) == 1 and steps[0].tolist() == [eos, eos]
    assert lm.generate("w0", 20, stop_at_eos=True, seed=1) == [""]
    config.stop_at_eos = False  # without the flag the budget is used up
    assert len(list(generate_ids(lm.model, [2, 3], config, eos_id=eos))) == 20


def test_finished_samples_keep_emitting_eos_until_all_are_done() -> None:
    lm = _lm()
    eos = lm.vocab.stoi[EOS]
    with torch.no_grad():
        lm.model.decoder.bias[eos] = 3.0  # likely, not certain: samples end at different times
    config = SampleConfig(max_tokens=60, stop_at_eos=True, seed=2, num_samples=6)
    rows = torch.stack(list(generate_ids(lm.model, [2], config, eos_id=eos)), dim=1).tolist()
    assert all(eos in row for row in rows)
    for row in rows:
        assert all(t == eos for t in row[row.index(eos):])
    assert max(row.index(eos) for row in rows) == len(rows[0]) - 1  # ends with the last one


def test_unknown_prime_words_become_unk_with_a_warning(lm: LanguageModel) -> None:
    with pytest.warns(UserWarning, match="zebra"):
        ids = encode_prompt(lm.vocab, "w1 zebra w2", SampleConfig())
    assert ids == [lm.vocab.stoi["w1"], lm.vocab.unk_id, lm.vocab.stoi["w2"]]
    with pytest.warns(UserWarning, match="not in the vocabulary"):
        assert len(lm.generate("zebra", 5, seed=1)) == 1


def test_empty_prime_starts_a_sentence(lm: LanguageModel) -> None:
    assert encode_prompt(lm.vocab, "", SampleConfig()) == [lm.vocab.stoi[EOS]]
    assert len(lm.generate("", 5, seed=1)) == 1


def test_num_samples_returns_that_many_reproducible_texts(lm: LanguageModel) -> None:
    texts = lm.generate("w1", 20, num_samples=3, seed=7)
    assert len(texts) == 3
    assert texts == lm.generate("w1", 20, num_samples=3, seed=7)
    assert len(set(texts)) > 1  # the copies of the prompt state sample independently


def test_batched_greedy_samples_equal_one_sample_decoded_alone(lm: LanguageModel) -> None:
    # With greedy decoding every row of the batch must follow the single-sample path exactly.
    alone = lm.generate("w5 w6", 15, temperature=0.0)[0]
    assert lm.generate("w5 w6", 15, temperature=0.0, num_samples=4) == [alone] * 4


def test_stream_yields_the_same_text_as_generate() -> None:
    lm = _lm()
    with torch.no_grad():  # frequent line breaks, often several in a row
        lm.model.decoder.bias[lm.vocab.stoi[EOS]] = 2.5
    for seed in range(8):
        pieces = list(lm.stream("w1 w2", 25, seed=seed))
        assert "".join(pieces) == lm.generate("w1 w2", 25, seed=seed)[0]


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        (["w1", "w2", EOS, "w3", EOS], "w1 w2\nw3\n"),
        (["w1", EOS, EOS, "w2"], "w1\n\nw2"),  # no space at the start of a line
        ([EOS, "w1"], "\nw1"),
        ([EOS, EOS, EOS], "\n\n\n"),
        (["w1"], "w1"),
        ([], ""),
    ],
)
def test_render_turns_eos_into_line_breaks(lm: LanguageModel, tokens: list[str],
                                           text: str) -> None:
    assert render(lm.vocab, lm.vocab.encode(tokens)) == text


@pytest.mark.parametrize(
    "options",
    [{"max_tokens": 0}, {"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5},
     {"num_samples": 0}],
)
def test_invalid_sample_options_raise_rnnlab_error(lm: LanguageModel, options: dict) -> None:
    options = {"max_tokens": 5, **options}
    with pytest.raises(RnnlabError):
        lm.generate("w1", **options)


def test_sampled_frequencies_follow_the_temperature() -> None:
    logits = torch.tensor([[math.log(0.6), math.log(0.4)]])
    cold = float((_draws(logits, n=20_000, temperature=0.5) == 0).float().mean())
    # p ** (1 / T) renormalised: 0.36 / (0.36 + 0.16)
    assert cold == pytest.approx(0.36 / 0.52, abs=0.02)


def test_sampled_frequencies_match_the_distribution_over_many_ids() -> None:
    generator = torch.Generator().manual_seed(3)
    probs = torch.rand(50, generator=generator) ** 3
    probs[::7] = 0.0  # ids of probability zero must never be drawn
    probs /= probs.sum()
    n = 100_000
    logits = probs.log().expand(n, -1)  # one row per draw, as in batched decoding
    draws = sample_next(logits, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=50).double()
    assert counts[probs == 0].sum() == 0
    expected = n * probs.double()
    seen = expected > 0
    chi2 = float(((counts[seen] - expected[seen]) ** 2 / expected[seen]).sum())
    assert chi2 < 76  # 41 degrees of freedom: the 99.9th percentile is ~76


@pytest.mark.parametrize("options", [{"temperature": math.nan}, {"temperature": math.inf},
                                     {"top_p": math.nan}])
def test_non_finite_sample_options_are_rejected(lm: LanguageModel, options: dict) -> None:
    with pytest.raises(RnnlabError, match="temperature|top-p"):
        lm.generate("w1", max_tokens=5, **options)
    with pytest.raises(RnnlabError, match="temperature|top-p"):
        next(lm.stream("w1", 5, **options))
