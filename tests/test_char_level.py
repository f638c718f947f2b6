"""Character-level language modelling: vocabulary, splits, prompts, bpc, and memorisation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab.config_resolve import resolve_config
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import load_lm_data
from rnnlab.models.language_model import RNNLanguageModel

SENTENCE = "hello pytorch. how long can a rnn cell remember? show me your limit!"


def _char_config(text_file: Path, **extra):
    overrides = {"data.text_path": str(text_file), "data.level": "char", "train.threads": 1,
                 **extra}
    return resolve_config(preset="char-fast", overrides=overrides)


def test_char_vocab_and_contiguous_split(tmp_path: Path) -> None:
    text = "".join(chr(ord("a") + i % 7) for i in range(998)) + "Zé"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    data = load_lm_data(_char_config(tmp_path / "t.txt").data)
    assert data.vocab.level == "char"
    # 90% / 10% cut at the exact character, like nanoGPT's shakespeare_char preparation
    assert data.splits["train"].numel() == 900 and data.splits["valid"].numel() == 100
    # 'Z' and 'é' only occur in the valid part: they map to the unknown symbol
    assert "Z" not in data.vocab and data.unknown["valid"] == 2


def test_unicode_text_round_trips(tmp_path: Path) -> None:
    text = "Война и мир. 战争与和平。" * 40
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    data = load_lm_data(_char_config(tmp_path / "t.txt").data)
    decoded = "".join(data.vocab.decode(data.splits["train"].tolist()))
    assert text.startswith(decoded)


def _memorise(tmp_path: Path, input_kind: str) -> rnnlab.LanguageModel:
    # The sentence alone, read from a zero state in one window per step: the model must learn
    # to continue it from its first character, as generation will ask.
    (tmp_path / "s.txt").write_text(SENTENCE, encoding="utf-8")
    config = resolve_config(preset="char-fast", overrides={
        "data.train_path": str(tmp_path / "s.txt"), "data.valid_path": str(tmp_path / "s.txt"),
        "data.level": "char", "model.input": input_kind, "model.hidden_size": 64,
        "model.dropout": 0.0, "data.batch_size": 1, "data.bptt": 100, "data.eval_batch_size": 1,
        "train.lr": 1e-2, "train.warmup_steps": 0, "train.epochs": 150, "train.seed": 0,
        "train.threads": 1,
    })
    result = rnnlab.train(config, tmp_path / "run")
    return rnnlab.LanguageModel.load(result.run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("input_kind", ["embedding", "onehot"])
def test_memorises_a_sentence_and_reproduces_it_greedily(tmp_path: Path, input_kind: str) -> None:
    torch.manual_seed(0)
    lm = _memorise(tmp_path, input_kind)
    text = lm.generate(SENTENCE[0], max_tokens=len(SENTENCE) - 1, temperature=0)[0]
    assert SENTENCE[0] + text == SENTENCE


def test_bits_per_character_is_nats_over_ln2(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("abcabcabd" * 200, encoding="utf-8")
    config = _char_config(tmp_path / "t.txt", **{"train.max_steps": 5, "model.hidden_size": 32,
                                                 "data.batch_size": 4, "data.bptt": 20})
    lm = rnnlab.LanguageModel.load(rnnlab.train(config, tmp_path / "run").run_dir)
    metrics = lm.evaluate("valid")
    assert metrics["bits"] == pytest.approx(metrics["loss"] / math.log(2))
    assert metrics["tokens"] == round(1800 * 0.1) - 1


def test_prime_with_unknown_characters(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("abcabcabd" * 200, encoding="utf-8")
    config = _char_config(tmp_path / "t.txt", **{"train.max_steps": 2, "model.hidden_size": 16,
                                                 "data.batch_size": 4, "data.bptt": 20})
    lm = rnnlab.LanguageModel.load(rnnlab.train(config, tmp_path / "run").run_dir)
    with pytest.raises(RnnlabError, match="not in the vocabulary"):
        lm.generate("abz", max_tokens=5)
    sample = lm.generate("abz", max_tokens=5, skip_unknown=True, seed=1)[0]
    assert len(sample) == 5 and set(sample) <= set("abcd\ufffd")
    with pytest.raises(RnnlabError, match="outside the vocabulary"):
        lm.generate("zzz", max_tokens=5, skip_unknown=True)
    with pytest.raises(RnnlabError, match="empty"):
        lm.generate("", max_tokens=5)
    for bad in ({"max_tokens": 0}, {"temperature": -1.0}, {"top_k": -1}):
        with pytest.raises(RnnlabError):
            lm.generate("ab", **({"max_tokens": 5} | bad))


def test_char_rnn_preset_never_drops_input_characters() -> None:
    config = resolve_config(preset="char-rnn").model
    vocab = 65  # Tiny Shakespeare's alphabet
    torch.manual_seed(0)
    model = RNNLanguageModel(config, vocab).train()
    seen = []  # the recurrent stack's inputs: what leaves the input dropout
    model.input_dropout.register_forward_hook(
        lambda module, args, out: seen.append(out.detach().clone()))
    tokens = torch.randint(0, vocab, (8, 20), generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # each pass would draw a fresh mask
        model.nll(tokens, tokens)
    for x in seen:  # (B, T, V): every character reaches the LSTM as its exact one-hot vector
        assert torch.equal(x, torch.nn.functional.one_hot(tokens, vocab).float())
    # The classic recipe's dropout stays between the layers and before the decoder.
    assert config.dropout_rates() == (0.0, 0.5, 0.5)
    assert (model.rnn.dropout, model.output_dropout.p) == (0.5, 0.5)


def test_text_shorter_than_one_sequence_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("abcdefghij" * 3, encoding="utf-8")
    config = _char_config(tmp_path / "t.txt", **{"data.batch_size": 64})
    with pytest.raises(RnnlabError, match="too few"):
        rnnlab.train(config, tmp_path / "run")
