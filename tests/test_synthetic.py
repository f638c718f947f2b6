"""The synthetic language: seeded, grammatical, and with an entropy that matches its samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnlab.data.synthetic import GRAMMAR, SyntheticLanguage, synthetic_splits
from rnnlab.data.vocab import EOS


@pytest.fixture(scope="module")
def language() -> SyntheticLanguage:
    return SyntheticLanguage.make(seed=0)


@pytest.fixture(scope="module")
def long_sample(language: SyntheticLanguage) -> list[str]:
    # Sampled once: shared by the tests that need many tokens.
    return language.sample(200_000, seed=1)


def test_make_is_deterministic_by_seed() -> None:
    a, b, c = SyntheticLanguage.make(5), SyntheticLanguage.make(5), SyntheticLanguage.make(6)
    assert a.words == b.words
    assert np.array_equal(a.transition, b.transition)
    assert all(np.array_equal(x, y) for x, y in zip(a.emission, b.emission, strict=True))
    assert a.words != c.words or not np.array_equal(a.transition, c.transition)


def test_sample_is_deterministic_by_seed(language: SyntheticLanguage) -> None:
    assert language.sample(500, seed=3) == language.sample(500, seed=3)
    assert language.sample(500, seed=3) != language.sample(500, seed=4)


def test_vocabulary_words_are_unique_and_sized_by_grammar(language: SyntheticLanguage) -> None:
    vocabulary = language.vocabulary
    assert len(vocabulary) == len(set(vocabulary)) == sum(n for n, _ in GRAMMAR.values())
    assert language.words[language.classes.index("eos")] == [EOS]


def test_transition_rows_are_distributions_that_respect_the_grammar(
    language: SyntheticLanguage,
) -> None:
    classes = language.classes
    assert classes == list(GRAMMAR)
    n = len(classes)
    assert language.transition.shape == (n, n, n)
    assert np.allclose(language.transition.sum(axis=2), 1.0)
    for b, name in enumerate(classes):
        allowed = np.zeros(n, dtype=bool)
        allowed[[classes.index(c) for c in GRAMMAR[name][1]]] = True
        rows = language.transition[:, b, :]  # every history (a, b) that ends in class b
        assert np.all(rows[:, ~allowed] == 0), f"{name} is followed by a class it may not be"
        assert np.all(rows[:, allowed] > 0)


def test_emissions_are_zipfian_distributions(language: SyntheticLanguage) -> None:
    for probs in language.emission:
        assert math.isclose(probs.sum(), 1.0)
        assert np.all(np.diff(probs) <= 0)  # rank order: most frequent word first


def test_samples_follow_the_grammar(
    language: SyntheticLanguage, long_sample: list[str]
) -> None:
    word_class = {w: language.classes[c] for c, ws in enumerate(language.words) for w in ws}
    classes = [word_class[w] for w in long_sample]
    assert classes[0] in GRAMMAR["eos"][1]  # the text starts a sentence
    for previous, current in zip(classes, classes[1:], strict=False):
        assert current in GRAMMAR[previous][1]


def test_entropy_rate_matches_empirical_nll(
    language: SyntheticLanguage, long_sample: list[str]
) -> None:
    # The source's NLL of its own long sample converges to the entropy rate (AEP); on 200k
    # tokens the spread across seeds is a few thousandths of a nat.
    rate = language.entropy_rate()
    assert 0 < rate < math.log(len(language.vocabulary))
    assert abs(language.nll(long_sample) - rate) < 0.02


def test_nll_of_three_tokens_by_hand(language: SyntheticLanguage) -> None:
    c = {name: i for i, name in enumerate(language.classes)}
    det, noun = language.words[c["det"]][1], language.words[c["noun"]][4]
    tokens = [det, noun, EOS]
    # Without context the text starts a sentence: the history is (eos, eos).
    probability = (
        language.transition[c["eos"], c["eos"], c["det"]] * language.emission[c["det"]][1]
        * language.transition[c["eos"], c["det"], c["noun"]] * language.emission[c["noun"]][4]
        * language.transition[c["det"], c["noun"], c["eos"]] * 1.0  # eos emits one word
    )
    assert math.isclose(language.nll(tokens), -math.log(probability) / 3, rel_tol=1e-12)


def test_nll_uses_the_last_two_context_tokens(language: SyntheticLanguage) -> None:
    c = {name: i for i, name in enumerate(language.classes)}
    verb, adv, noun = (language.words[c[k]][0] for k in ("verb", "adv", "noun"))
    # Only (verb, adv) matters, not the noun before; eos is the only word of its class.
    expected = -math.log(language.transition[c["verb"], c["adv"], c["eos"]])
    assert math.isclose(language.nll([EOS], context=[noun, verb, adv]), expected)


def test_splits_sizes_and_true_nll_context() -> None:
    splits = synthetic_splits(train_tokens=3_000, seed=2)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (3_000, 1_000, 1_000)
    language = splits.language
    assert splits.true_nll("train") == language.nll(splits.train)
    # Held-out NLL is conditioned on the two tokens that precede the split in the sample.
    assert splits.true_nll("valid") == language.nll(splits.valid, splits.train[-2:])
    assert splits.true_nll("test") == language.nll(splits.test, splits.valid[-2:])
