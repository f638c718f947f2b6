"""Vocab: which tokens are kept, which ids they get, and the JSON file."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnlab.data.vocab import EOS, UNK, Vocab
from rnnlab.errors import RnnlabError

# "b" is the most frequent; "a" and "c" tie on 2 and "a" appears first; "d" and "e" are singletons.
TOKENS = "a b c b d b a c e".split()


def test_ids_follow_frequency_then_first_appearance() -> None:
    vocab = Vocab.build(TOKENS)
    assert vocab.itos == [UNK, EOS, "b", "a", "c", "d", "e"]
    assert [vocab.id(t) for t in ("b", "a", "c")] == [2, 3, 4]


def test_same_text_gives_same_ids() -> None:
    assert Vocab.build(TOKENS).itos == Vocab.build(list(TOKENS)).itos


def test_min_freq_drops_rare_tokens() -> None:
    vocab = Vocab.build(TOKENS, min_freq=2)
    assert vocab.itos == [UNK, EOS, "b", "a", "c"]
    assert "d" not in vocab


def test_max_size_counts_the_specials() -> None:
    vocab = Vocab.build(TOKENS, max_size=4)
    assert len(vocab) == 4
    assert vocab.itos == [UNK, EOS, "b", "a"]  # the two most frequent words fill the rest


def test_max_size_smaller_than_specials_keeps_only_specials() -> None:
    assert Vocab.build(TOKENS, max_size=1).itos == [UNK, EOS]


def test_specials_in_the_text_are_not_counted_twice() -> None:
    vocab = Vocab.build(["x", EOS, "x", EOS, EOS])
    assert vocab.itos == [UNK, EOS, "x"]


def test_unknown_tokens_map_to_unk() -> None:
    vocab = Vocab.build(TOKENS, min_freq=2)
    assert vocab.encode(["b", "d", "zzz"]) == [2, vocab.unk_id, vocab.unk_id]
    assert vocab.decode(vocab.encode(["a", "c"])) == ["a", "c"]


def test_without_unk_an_unknown_token_is_an_error() -> None:
    vocab = Vocab.build(TOKENS, unk=None)
    assert vocab.unk_id is None
    with pytest.raises(RnnlabError, match="zzz"):
        vocab.id("zzz")


def test_duplicate_tokens_are_rejected() -> None:
    with pytest.raises(RnnlabError, match="duplicate"):
        Vocab([UNK, "a", "a"])


def test_missing_unk_token_is_rejected() -> None:
    with pytest.raises(RnnlabError, match="unknown token"):
        Vocab(["a", "b"])


def test_save_load_round_trip(tmp_path: Path) -> None:
    # Non-ASCII tokens and the char level must survive the JSON file unchanged.
    vocab = Vocab.build(list("héllo wörld"), level="char", specials=(UNK,))
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded.itos == vocab.itos
    assert loaded.level == "char"
    assert loaded.unk == UNK
    assert loaded.join(["h", "é"]) == "hé"


def test_round_trip_keeps_unk_none(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    Vocab.build(TOKENS, unk=None).save(path)
    assert Vocab.load(path).unk is None


@pytest.mark.parametrize(
    "content",
    [
        '{"tokens": ["<unk>", "a"',  # truncated JSON
        '{"level": "word", "unk": "<unk>"}',  # no tokens
        '["<unk>", "a"]',  # not an object
        '{"level": "word", "unk": "<unk>", "tokens": ["<unk>", "a", "a"]}',  # duplicates
    ],
)
def test_corrupted_vocab_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RnnlabError, match="vocab"):
        Vocab.load(path)


def test_binary_garbage_vocab_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RnnlabError, match="corrupted"):
        Vocab.load(path)


def test_missing_vocab_file(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match="not found"):
        Vocab.load(tmp_path / "nope.json")
