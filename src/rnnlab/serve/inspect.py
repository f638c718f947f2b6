"""What the web page shows about a text: each token's log-probability with the model's top
alternatives, and the activations of chosen hidden units."""

from __future__ import annotations

from typing import Any

import torch

from rnnlab.data.text import tokenize
from rnnlab.data.vocab import EOS
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import encode
from rnnlab.lm.evaluation import perplexity
from rnnlab.lm.inference import LanguageModel


def _display(token: str) -> str:
    return "\n" if token == EOS else token


def _ids(lm: LanguageModel, text: str, max_tokens: int) -> tuple[torch.Tensor, int, list[str]]:
    """The ids ``LanguageModel.score`` reads: an end of line first, and (char level) last."""
    tokens = tokenize(text, lm.vocab.level)
    eol = EOS if lm.vocab.level == "word" else "\n"
    if lm.vocab.level == "char" and tokens and tokens[-1] != eol:
        tokens.append(eol)
    if len(tokens) > max_tokens:
        raise TooLong(f"the text has {len(tokens)} tokens; this server reads at most "
                      f"{max_tokens} per request")
    ids, unknown = encode(lm.vocab, tokens)
    if eol in lm.vocab:
        ids = torch.cat([torch.tensor([lm.vocab.id(eol)]), ids])
        tokens = [eol, *tokens]
    return ids, unknown, tokens


class TooLong(RnnlabError):
    """The text is over the server's limit of tokens per request (HTTP 413)."""


@torch.inference_mode()
def token_scores(lm: LanguageModel, text: str, top: int, max_tokens: int) -> dict[str, Any]:
    """Each scored token's log-probability (nats) and the ``top`` most likely tokens there.

    The totals agree with ``LanguageModel.score`` (the same ids, read as one stream); the first
    token is context only.
    """
    if lm.line_mode:
        raise RnnlabError("per-token scores read a stream; this run reads lines (use \"texts\" "
                          "with a stream language model)")
    ids, unknown, tokens = _ids(lm, text, max_tokens)
    if ids.numel() < 2:
        raise RnnlabError("the text needs at least one token to score")
    device = next(lm.model.parameters()).device
    logits, _ = lm.model(ids[None, :-1].to(device))  # (1, T, V)
    log_probs = logits[0].float().log_softmax(dim=-1).cpu()  # (T, V)
    targets = ids[1:]
    picked = log_probs.gather(1, targets[:, None])[:, 0]  # (T,)
    rows: list[dict[str, Any]] = []
    best_lp, best_ids = (log_probs.topk(min(top, log_probs.shape[1]), dim=1) if top
                         else (None, None))
    for t, target in enumerate(targets.tolist()):
        row: dict[str, Any] = {"token": _display(lm.vocab.itos[target]),
                               "logprob": float(picked[t])}
        if best_ids is not None:
            row["top"] = [[_display(lm.vocab.itos[i]), float(lp)]
                          for i, lp in zip(best_ids[t].tolist(), best_lp[t].tolist(),
                                           strict=True)]
        rows.append(row)
    total = float(picked.sum())
    return {"tokens": rows, "context": _display(tokens[0]), "logprob": total,
            "count": len(rows), "unknown": unknown, "ppl": perplexity(-total / len(rows))}


@torch.inference_mode()
def activations(lm: LanguageModel, text: str, units: list[int], layer: int,
                max_tokens: int) -> dict[str, Any]:
    """(T,) values of hidden units ``units`` of ``layer`` after each token of ``text``."""
    if lm.line_mode:
        raise RnnlabError("activations read a stream; this run reads lines")
    config = lm.config.model
    if not -config.num_layers <= layer < config.num_layers:
        raise RnnlabError(f"layer must be in [0, {config.num_layers}), got {layer}")
    bad = [u for u in units if not 0 <= u < config.hidden_size]
    if bad:
        raise RnnlabError(f"units must be in [0, {config.hidden_size}), got {bad[0]}")
    tokens = tokenize(text, lm.vocab.level)
    if not tokens:
        raise RnnlabError("the text has no tokens")
    if len(tokens) > max_tokens:
        raise TooLong(f"the text has {len(tokens)} tokens; this server reads at most "
                      f"{max_tokens} per request")
    ids, _ = encode(lm.vocab, tokens)
    device = next(lm.model.parameters()).device
    state = None
    values = []
    # One step per token: a stacked recurrent module returns every step's output of its last
    # layer only, and the page may ask for any layer.
    for t in range(ids.numel()):
        _, state = lm.model(ids[None, t : t + 1].to(device), state)
        h = state[0] if isinstance(state, tuple) else state  # (layers, 1, H)
        values.append(h[layer, 0, units].float().cpu())
    table = torch.stack(values, dim=1) if units else torch.empty(0, len(values))  # (U, T)
    return {"tokens": [_display(t) for t in tokens], "layer": layer % config.num_layers,
            "units": {str(u): row for u, row in zip(units, table.tolist(), strict=True)},
            "hidden_size": config.hidden_size, "layers": config.num_layers}
