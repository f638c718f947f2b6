"""Scoring texts: each from an empty state after an end of line, every line's end scored, as
the model was trained; `rnnlab score` prints one JSON line per input line."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from rnnlab import cli
from rnnlab.api import LanguageModel
from rnnlab.config import ModelConfig, RunConfig
from rnnlab.data.vocab import EOS, UNK, UNK_CHAR, Vocab
from rnnlab.models.language_model import RNNLanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["the", "cat", "sees", "a", "dog"]


def _lm(level: str = "word") -> LanguageModel:
    tokens = [UNK, EOS, *WORDS] if level == "word" else [UNK_CHAR, "\n", *"the casdog"]
    vocab = Vocab(tokens, level=level, unk=UNK if level == "word" else UNK_CHAR)
    config = RunConfig()
    config.data.level = level
    config.model = ModelConfig(embedding_dim=8, hidden_size=8, num_layers=1, dropout=0.0,
                               tie_weights=False)
    torch.manual_seed(0)
    return LanguageModel(RNNLanguageModel(config.model, len(vocab)), vocab, config)


def _logprob(lm: LanguageModel, tokens: list[str]) -> float:
    """Sum of log p(token | tokens before it) from a plain forward pass over the whole text."""
    ids = torch.tensor([[lm.vocab.id(t) for t in tokens]])
    with torch.no_grad():
        logits, _ = lm.model(ids[:, :-1])
    return float(logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).sum())


def test_a_sentence_is_scored_after_an_end_of_sentence_and_with_its_own() -> None:
    lm = _lm()
    [result] = lm.score(["the cat sees a dog"])
    expected = _logprob(lm, [EOS, "the", "cat", "sees", "a", "dog", EOS])
    assert result["tokens"] == 6 and result["unknown"] == 0
    assert result["logprob"] == pytest.approx(expected, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(-expected / 6), rel=1e-5)


def test_each_text_starts_from_an_empty_state_and_unknowns_are_counted() -> None:
    lm = _lm()
    both = lm.score(["the cat", "a zebra sees the okapi"])
    assert both[0] == lm.score(["the cat"])[0]
    assert both[1]["unknown"] == 2 and both[1]["tokens"] == 6
    lines = lm.score(["the cat\na dog"])[0]  # two lines: each ends with <eos>
    assert lines["logprob"] == pytest.approx(
        _logprob(lm, [EOS, "the", "cat", EOS, "a", "dog", EOS]), rel=1e-5)


def test_an_empty_text_has_nothing_to_score() -> None:
    assert _lm().score(["", "   "]) == [{"logprob": 0.0, "tokens": 0, "unknown": 0,
                                         "ppl": None}] * 2


def test_characters_are_scored_after_a_newline_and_with_one() -> None:
    lm = _lm("char")
    [result] = lm.score(["the cat"])
    assert result["tokens"] == len("the cat") + 1
    assert result["logprob"] == pytest.approx(_logprob(lm, list("\nthe cat\n")), rel=1e-5)


def test_cli_score_prints_one_json_line_per_input_line(tmp_path: Path, capsys,
                                                       monkeypatch) -> None:
    lm = _lm()
    run = lm.save(tmp_path / "run")
    lines = ["the cat sees a dog", "", "a dog"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert cli.main(["score", str(run), "--file", str(tmp_path / "in.txt")]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["text"] for o in out] == lines
    assert out[0]["logprob"] == pytest.approx(lm.score([lines[0]])[0]["logprob"], abs=1e-5)
    assert out[1]["tokens"] == 0 and out[1]["ppl"] is None
    monkeypatch.setattr("sys.stdin", io.StringIO("a dog\n"))
    assert cli.main(["score", str(run), "--file", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 3
