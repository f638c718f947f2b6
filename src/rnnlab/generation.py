"""Sampling text from a language model: the prompt is read once, then one step per token.

``sample_next`` is a pure function of the logits and a generator; ``generate_ids`` carries the
recurrent state so each new token costs a single step of the network, and decodes several
samples as one batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from rnnlab import fast
from rnnlab.data.text import word_tokens
from rnnlab.data.vocab import EOS, Vocab
from rnnlab.errors import RnnlabError
from rnnlab.lm.cache import CacheSettings, cache_probs
from rnnlab.models.cells import State, map_state
from rnnlab.models.language_model import RNNLanguageModel


@dataclass
class SampleConfig:
    """How to sample: length, randomness, and what to avoid."""

    max_tokens: int = 100
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter
    skip: list[str] = field(default_factory=list)  # tokens never emitted, e.g. ["<unk>"]
    stop_at_eos: bool = False
    num_samples: int = 1
    seed: int | None = None
    skip_unknown: bool = False  # char level: drop prime characters outside the vocabulary
    # A neural cache of the prompt and the text so far mixed into each step (Grave et al., 2017)
    cache: bool = False
    cache_window: int = 500
    cache_theta: float = 0.3
    cache_lambda: float = 0.1

    def validate(self) -> SampleConfig:
        if self.max_tokens <= 0:
            raise RnnlabError(
                f"the number of tokens to generate must be positive, got {self.max_tokens}")
        if not 0 <= self.temperature < math.inf:  # also false for NaN
            raise RnnlabError(f"temperature must be >= 0 and finite, got {self.temperature}")
        if self.top_k < 0:
            raise RnnlabError(f"top-k must be >= 1 (or 0 for no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise RnnlabError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.num_samples <= 0:
            raise RnnlabError(f"the number of samples must be positive, got {self.num_samples}")
        if self.cache:
            self.cache_settings()
        return self

    def cache_settings(self) -> CacheSettings:
        return CacheSettings(self.cache_window, self.cache_theta, self.cache_lambda).validate()


def sample_next(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    banned: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(N, V) logits -> (N,) sampled ids.

    ``banned`` ids get probability zero; ``top_k`` keeps the k most likely ids; ``top_p`` keeps
    the smallest set whose probability reaches p (Holtzman et al., 2020); temperature 0 is greedy.
    """
    logits = logits.float()
    if banned is not None and banned.numel():
        logits = logits.index_fill(-1, banned, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    if temperature != 1:
        logits = logits / temperature
    # The filters keep their candidates sorted best first, as (N, C) logits and their ids;
    # sampling then reads only the C candidates, not the whole vocabulary.
    candidates = None
    if top_k and top_k < logits.shape[-1]:
        logits, candidates = torch.topk(logits, top_k, dim=-1)
    if top_p < 1.0:
        if candidates is None:
            logits, candidates = torch.sort(logits, dim=-1, descending=True)
        probs = logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely ids
        logits = logits.masked_fill(before >= top_p, float("-inf"))
    picked = _inverse_cdf(logits, generator)
    return picked if candidates is None else candidates.gather(-1, picked[:, None]).squeeze(-1)


def _inverse_cdf(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(N, C) logits -> (N,) column indices drawn from their softmax.

    One uniform per row against the running sum of probabilities: over a large vocabulary
    this is several times cheaper than ``torch.multinomial``.
    """
    cdf = _cdf(logits)
    u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device, generator=generator)
    return _draw(cdf, u)


def _cdf(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) logits -> (N, C) running sums of their softmax, in float64."""
    return logits.softmax(dim=-1).double().cumsum(dim=-1)  # ids of probability 0 add no width


def _draw(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(N, C) running sums and (N, 1) uniforms -> (N,) column indices."""
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return picked.squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def sample_rows(logits: torch.Tensor, temperatures: list[float], counts: list[int],
                generators: list[torch.Generator]) -> torch.Tensor:
    """(R, V) logits of several requests, stacked -> (R,) ids, in one pass over the rows.

    Request i owns ``counts[i]`` consecutive rows, samples at ``temperatures[i]`` (> 0) with no
    filters and draws from ``generators[i]``: its ids equal ``sample_next`` on its rows alone,
    since every operation here works row by row and each generator gives its rows the same
    uniforms. One pass instead of one per request keeps a batched server's step short.
    """
    logits = logits.float()
    if any(t != 1 for t in temperatures):  # x / 1 is x, as when sample_next skips the division
        per_row = [t for t, n in zip(temperatures, counts, strict=True) for _ in range(n)]
        logits = logits / torch.tensor(per_row, dtype=logits.dtype, device=logits.device)[:, None]
    cdf = _cdf(logits)
    u = torch.cat([torch.rand(n, 1, dtype=cdf.dtype, device=cdf.device, generator=g)
                   for n, g in zip(counts, generators, strict=True)])
    return _draw(cdf, u)


def expand_state(state: State, copies: int) -> State:
    """Repeat a batch-1 state ``copies`` times along the batch dimension."""
    return map_state(lambda s: s.expand(-1, copies, -1).contiguous(), state)


@torch.inference_mode()
def generate_ids(
    model: RNNLanguageModel, prompt: list[int], config: SampleConfig,
    banned: list[int] = (), eos_id: int | None = None, state: State | None = None,
) -> Iterator[torch.Tensor]:
    """Yield (num_samples,) ids, one step at a time, after reading ``prompt`` once.

    ``state``: the batch-1 state the prompt is read from (default: zeros), e.g. a label's.

    With ``config.stop_at_eos`` a sample that produced ``eos_id`` keeps emitting ``eos_id`` and the
    iteration ends when every sample has finished.
    """
    if not prompt:
        raise RnnlabError("the prompt is empty")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    tokens = torch.tensor([prompt], device=device)  # (1, P)
    cached = CachedSteps(model, config.cache_settings()) if config.cache else None
    if cached is not None:
        logits, state = cached.start(tokens, config.num_samples, state)
    else:
        logits, state = model(tokens, state)
        logits = logits[:, -1].expand(config.num_samples, -1)  # (N, V)
        state = expand_state(state, config.num_samples)
    banned_ids = torch.tensor(sorted(set(banned)), dtype=torch.long, device=device)
    done = torch.zeros(config.num_samples, dtype=torch.bool, device=device)
    # Fast path: weights laid out for one-token steps (rnnlab.fast.stepper), same logits.
    # A stack of layers of their own sizes has no fast step; it runs the model itself.
    steppable = cached is None and isinstance(model.rnn, torch.nn.RNNBase)
    stepper = fast.TokenStepper(model) if fast.enabled() and steppable else None
    for _ in range(config.max_tokens):
        next_ids = sample_next(logits, temperature=config.temperature, top_k=config.top_k,
                               top_p=config.top_p, banned=banned_ids, generator=generator)
        if config.stop_at_eos and eos_id is not None:
            next_ids = next_ids.masked_fill(done, eos_id)
            done |= next_ids == eos_id
        yield next_ids
        if config.stop_at_eos and bool(done.all()):
            return
        if cached is not None:
            logits, state = cached.step(next_ids, state)
        elif stepper is not None:
            logits, state = stepper.step(next_ids, state)  # one step: (N,) -> (N, V)
        else:
            logits, state = model(next_ids[:, None], state)  # (N, 1) -> (N, 1, V)
            logits = logits[:, 0]


class CachedSteps:
    """Decoding with the neural cache: the pairs (h_i, x_{i+1}) of the prompt and of the tokens
    sampled so far, the last ``window`` of them, mix into each step's distribution (see
    ``rnnlab.lm.cache.cache_probs``); the logits handed to ``sample_next`` are its logarithm."""

    def __init__(self, model: RNNLanguageModel, settings: CacheSettings):
        self.model, self.settings = model, settings

    def start(self, tokens: torch.Tensor, samples: int,
              state: State | None = None) -> tuple[torch.Tensor, State]:
        """(1, P) prompt -> (N, V) logits of the first sampled token, and the (N) state."""
        features, state = self.model.features(tokens, state)  # (1, P, D)
        window = self.settings.window
        self.keys = features[:, :-1][:, -window:].expand(samples, -1, -1)  # (N, W, D)
        self.values = tokens[:, 1:][:, -window:].expand(samples, -1)  # (N, W)
        self.query = features[:, -1].expand(samples, -1)  # (N, D)
        return self.logits(), expand_state(state, samples)

    def step(self, next_ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """(N,) sampled ids -> (N, V) logits of the next token; the pair joins the cache."""
        window = self.settings.window
        self.keys = torch.cat([self.keys, self.query[:, None]], dim=1)[:, -window:]
        self.values = torch.cat([self.values, next_ids[:, None]], dim=1)[:, -window:]
        features, state = self.model.features(next_ids[:, None], state)  # (N, 1, D)
        self.query = features[:, 0]
        return self.logits(), state

    def logits(self) -> torch.Tensor:
        if self.model.adaptive is not None:
            probs = self.model.adaptive.log_prob(self.query).exp()
        else:
            probs = self.model.decoder(self.query).float().softmax(dim=-1)  # (N, V)
        return cache_probs(probs, self.query, self.keys, self.values, self.settings).log()


def encode_prompt(vocab: Vocab, prime: str, config: SampleConfig) -> list[int]:
    """Prompt text -> ids; unknown words become <unk> with a warning, unknown characters are an
    error unless ``skip_unknown``."""
    if vocab.level == "char":
        if not prime:
            raise RnnlabError("the prime text is empty; give at least one character with --prime")
        unknown = sorted({ch for ch in prime if ch not in vocab})
        if unknown and not config.skip_unknown:
            raise RnnlabError(f"prime characters not in the vocabulary: {''.join(unknown)!r} "
                              "(use --skip-unknown to drop them)")
        ids = [vocab.id(ch) for ch in prime if ch in vocab]
        if not ids:
            raise RnnlabError("every character of the prime is outside the vocabulary")
        return ids
    words = word_tokens(prime)  # a line break in the prompt is an end of sentence
    if words and not prime.endswith("\n"):
        words.pop()  # the prompt's last line continues: no <eos> after it
    unknown = [w for w in words if w not in vocab]
    if unknown:
        warnings.warn(f"prime words not in the vocabulary, read as {vocab.unk}: "
                      + ", ".join(unknown[:10]), stacklevel=2)
    return vocab.encode(words) if words else [vocab.id(EOS)]


def render(vocab: Vocab, ids: list[int]) -> str:
    """Ids -> text: words joined by spaces with <eos> as a line break; characters as they are."""
    if vocab.level == "char":
        return "".join(vocab.itos[i] for i in ids)
    # Built piece by piece (as LanguageModel.stream does) so that no line starts with a space,
    # not even after two line breaks in a row.
    pieces: list[str] = []
    for i in ids:
        token = vocab.itos[i]
        if token == EOS:
            pieces.append("\n")
        else:
            pieces.append(token if not pieces or pieces[-1] == "\n" else " " + token)
    return "".join(pieces)
