"""A built-in synthetic language whose true entropy is known exactly.

Every word belongs to exactly one grammatical class (determiner, noun, verb, ...). The next class
depends on the two previous classes through a seeded second-order table that respects a small
grammar (a determiner is followed by an adjective or a noun, ...), and each class emits its words
with Zipfian frequencies. Because the class of each word is visible, the source is a second-order
Markov chain over words, so its entropy rate and the exact probability of any text are computable:
a language model trained on it can be compared with the best achievable perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rnnlab.data.vocab import EOS

# class -> (number of words, the classes that may follow it)
GRAMMAR: dict[str, tuple[int, tuple[str, ...]]] = {
    "eos": (1, ("det", "noun", "adv", "conj")),
    "det": (8, ("adj", "noun")),
    "adj": (60, ("adj", "noun")),
    "noun": (120, ("verb", "prep", "conj", "eos")),
    "verb": (80, ("det", "noun", "adv", "prep", "eos")),
    "adv": (30, ("verb", "prep", "eos")),
    "prep": (15, ("det", "noun")),
    "conj": (6, ("det", "noun")),
}
_ENDINGS = {"det": "", "adj": "ful", "noun": "o", "verb": "es", "adv": "ly", "prep": "", "conj": ""}
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]


@dataclass
class SyntheticLanguage:
    """The source: words per class, emission and transition probabilities (all seeded)."""

    classes: list[str]
    words: list[list[str]]  # words[c] in rank order
    emission: list[np.ndarray]  # emission[c][k] = P(words[c][k] | class c)
    transition: np.ndarray  # transition[a, b, c] = P(class c | classes a, b)

    @classmethod
    def make(
        cls, seed: int = 0, zipf: float = 1.1, concentration: float = 0.7
    ) -> SyntheticLanguage:
        rng = np.random.default_rng(seed)
        classes = list(GRAMMAR)
        index = {c: i for i, c in enumerate(classes)}
        used: set[str] = {EOS}
        words, emission = [], []
        for name, (count, _) in GRAMMAR.items():
            if name == "eos":
                words.append([EOS])
            else:
                words.append([_new_word(rng, used, _ENDINGS[name]) for _ in range(count)])
            weights = 1.0 / np.arange(1, len(words[-1]) + 1) ** zipf
            emission.append(weights / weights.sum())
        n = len(classes)
        transition = np.zeros((n, n, n))
        for a in range(n):
            for b, name in enumerate(classes):
                allowed = [index[c] for c in GRAMMAR[name][1]]
                transition[a, b, allowed] = rng.dirichlet([concentration] * len(allowed))
        return cls(classes, words, emission, transition)

    @property
    def vocabulary(self) -> list[str]:
        return [w for class_words in self.words for w in class_words]

    def entropy_rate(self) -> float:
        """Nats per token in the long run: H(next class | two classes) + H(word | class)."""
        n = len(self.classes)
        pair_chain = np.zeros((n * n, n * n))  # (a, b) -> (b, c)
        for a in range(n):
            for b in range(n):
                for c in range(n):
                    pair_chain[a * n + b, b * n + c] = self.transition[a, b, c]
        stationary = np.full(n * n, 1.0 / (n * n))
        for _ in range(2000):  # power iteration; the chain is aperiodic (eos -> ... -> eos)
            stationary = stationary @ pair_chain
        word_entropy = np.array([-(p * np.log(p)).sum() for p in self.emission])
        total = 0.0
        for a in range(n):
            for b in range(n):
                p = self.transition[a, b]
                nz = p > 0
                total += stationary[a * n + b] * (
                    -(p[nz] * np.log(p[nz])).sum() + (p * word_entropy).sum()
                )
        return float(total)

    def sample(self, num_tokens: int, seed: int) -> list[str]:
        """``num_tokens`` tokens starting at a sentence boundary."""
        rng = np.random.default_rng(seed)
        n = len(self.classes)
        cumulative = np.cumsum(self.transition, axis=2)
        # Rounding can leave the last cumulative value just below 1; a draw above it would pick
        # class n - 1 even where the grammar forbids it. Dividing makes it exactly 1.
        cumulative /= cumulative[:, :, -1:]
        draws = rng.random(num_tokens)
        sequence = np.empty(num_tokens, dtype=np.int64)
        a = b = 0  # both "eos": the text starts a sentence
        for t in range(num_tokens):  # the class chain is sequential; emissions are vectorised
            c = min(int(np.searchsorted(cumulative[a, b], draws[t], side="right")), n - 1)
            sequence[t] = c
            a, b = b, c
        tokens = np.empty(num_tokens, dtype=object)
        for c in range(n):
            where = np.flatnonzero(sequence == c)
            picks = rng.choice(len(self.words[c]), size=len(where), p=self.emission[c])
            tokens[where] = np.array(self.words[c], dtype=object)[picks]
        return tokens.tolist()

    def nll(self, tokens: list[str], context: list[str] | None = None) -> float:
        """Mean negative log-likelihood (nats) of ``tokens`` under the true source.

        ``context`` holds the tokens just before (at least two), else a sentence start is assumed.
        """
        word_class = {w: c for c, ws in enumerate(self.words) for w in ws}
        word_rank = {w: k for ws in self.words for k, w in enumerate(ws)}
        history = [word_class[w] for w in (context or [EOS, EOS])[-2:]]
        if len(history) < 2:
            history = [0] * (2 - len(history)) + history
        a, b = history
        total = 0.0
        for w in tokens:
            c = word_class[w]
            total -= math.log(self.transition[a, b, c] * self.emission[c][word_rank[w]])
            a, b = b, c
        return total / len(tokens)


def _new_word(rng: np.random.Generator, used: set[str], ending: str) -> str:
    while True:
        syllables = rng.integers(1, 3)
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + ending
        if word not in used:
            used.add(word)
            return word


@dataclass
class SyntheticSplits:
    train: list[str]
    valid: list[str]
    test: list[str]
    language: SyntheticLanguage

    def true_nll(self, split: str) -> float:
        """The source's own NLL on a split, given the text that precedes it."""
        before = {"train": None, "valid": self.train[-2:], "test": self.valid[-2:]}[split]
        return self.language.nll(getattr(self, split), before)


def synthetic_splits(train_tokens: int = 600_000, seed: int = 0) -> SyntheticSplits:
    """One long sample cut into train, valid and test (each of the last two 10% of train)."""
    language = SyntheticLanguage.make(seed)
    held_out = max(train_tokens // 10, 1000)
    tokens = language.sample(train_tokens + 2 * held_out, seed=seed + 1)
    return SyntheticSplits(
        tokens[:train_tokens],
        tokens[train_tokens : train_tokens + held_out],
        tokens[train_tokens + held_out :],
        language,
    )
