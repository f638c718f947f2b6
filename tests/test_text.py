"""Reading text files, tokenising, and cutting one text into train/valid/test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rnnlab.config import DataConfig
from rnnlab.data.text import (
    char_tokens,
    read_text,
    split_text,
    split_tokens,
    tokenize,
    word_tokens,
)
from rnnlab.data.vocab import EOS
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import load_lm_data


def _expect_error(path: Path, match: str) -> None:
    """read_text must fail with a message that names the file, so the user knows which one."""
    with pytest.raises(RnnlabError, match=match) as info:
        read_text(path)
    assert str(path) in str(info.value)


def test_reads_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("héllo\nwörld\n", encoding="utf-8")
    assert read_text(path) == "héllo\nwörld\n"


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "missing.txt", "not found")


def test_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path, "directory")


def test_nul_bytes_mean_binary(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"abc\x00def")
    _expect_error(path, "binary")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    _expect_error(path, "UTF-8")


@pytest.mark.parametrize("content", [b"", b"   \n\t\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf \n"])
def test_empty_or_whitespace_only(tmp_path: Path, content: bytes) -> None:
    # A byte order mark alone (or before blanks) is no text either.
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    _expect_error(path, "empty")


def test_byte_order_mark_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffa b\n".encode())
    assert read_text(path) == "a b\n"


def test_word_tokens_end_every_nonempty_line_with_eos() -> None:
    text = "the cat  sat\n\n   \n on\tthe mat"  # blank lines give nothing; no final newline
    assert word_tokens(text) == ["the", "cat", "sat", EOS, "on", "the", "mat", EOS]


def test_tokenize_by_level() -> None:
    assert tokenize("a b\n", "char") == char_tokens("a b\n") == ["a", " ", "b", "\n"]
    assert tokenize("a b\n", "word") == ["a", "b", EOS]


def _numbered_lines(n: int) -> str:
    return "".join(f"line {i} has words\n" for i in range(n))


def test_word_split_cuts_at_line_boundaries() -> None:
    text = _numbered_lines(100)
    train, valid, test = split_text(text, [0.8, 0.1, 0.1], "word")
    assert train + valid + test == text
    # 80 / 10 / 10 whole lines: every piece starts at a line and ends with its newline.
    assert [piece.count("\n") for piece in (train, valid, test)] == [80, 10, 10]
    for piece in (train, valid, test):
        assert piece.endswith("\n")
        assert re.fullmatch(r"(line \d+ has words\n)+", piece)


def test_word_split_with_two_fractions() -> None:
    text = _numbered_lines(10)
    pieces = split_text(text, [0.7, 0.3], "word")
    assert [p.count("\n") for p in pieces] == [7, 3]
    assert "".join(pieces) == text


def test_char_split_is_exact() -> None:
    text = "abcdefghij" * 10  # 100 characters, no newlines at all
    train, valid, test = split_text(text, [0.9, 0.05, 0.05], "char")
    assert (len(train), len(valid), len(test)) == (90, 5, 5)
    assert train + valid + test == text


def test_char_split_may_cut_inside_a_line() -> None:
    text = "ab\ncd\nef"
    train, valid = split_text(text, [0.5, 0.5], "char")
    assert (train, valid) == ("ab\nc", "d\nef")


def test_split_keeps_crlf_lines_intact() -> None:
    text = "a\r\nb\r\nc\r\nd\r\n"
    pieces = split_text(text, [0.5, 0.25, 0.25], "word")
    assert pieces == ["a\r\nb\r\n", "c\r\n", "d\r\n"]


def test_word_split_of_one_long_line_cuts_between_tokens(tmp_path: Path) -> None:
    words = [f"w{i % 37}" for i in range(1000)]
    path = tmp_path / "one-line.txt"
    path.write_text(" ".join(words), encoding="utf-8")  # no newline anywhere
    config = DataConfig(corpus=None, text_path=str(path), split=[0.8, 0.1, 0.1])
    data = load_lm_data(config)
    pieces = [data.vocab.decode(data.splits[name].tolist()) for name in ("train", "valid", "test")]
    # 1000 words and the line's <eos>: contiguous runs at the 80% and 90% cuts.
    assert [len(p) for p in pieces] == [801, 100, 100]
    assert pieces[0] + pieces[1] + pieces[2] == [*words, EOS]
    text = " ".join(words)
    assert "".join(split_text(text, [0.8, 0.1, 0.1], "word")) == text
    assert [len(p.split()) for p in split_text(text, [0.8, 0.1, 0.1], "word")] == [801, 100, 99]


def test_word_split_keeps_lines_whole_when_a_line_end_is_near_the_cut() -> None:
    lines = [" ".join(["word"] * (1 + i % 7)) + "\n" for i in range(400)]
    text = "".join(lines)
    tokens = word_tokens(text)
    train, valid = split_text(text, [0.9, 0.1], "word")
    assert train + valid == text and train.endswith("\n")
    assert abs(len(word_tokens(train)) - 0.9 * len(tokens)) <= 0.01 * len(tokens)
    pieces = split_tokens(tokens, [0.9, 0.1])
    assert pieces == [word_tokens(train), word_tokens(valid)]


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_line_endings_are_read_as_newlines(tmp_path: Path, ending: bytes) -> None:
    lines = [b"the cat sat", b"on the mat", b"", b"and slept", b"all day long"] * 6
    unix, other = tmp_path / "unix.txt", tmp_path / "other.txt"
    unix.write_bytes(b"\n".join(lines) + b"\n")
    other.write_bytes(ending.join(lines) + ending)
    assert read_text(other) == read_text(unix)
    for level in ("char", "word"):
        a, b = (load_lm_data(DataConfig(corpus=None, text_path=str(p), level=level,
                                        split=[0.8, 0.2])) for p in (unix, other))
        assert "\r" not in b.vocab and b.vocab.itos == a.vocab.itos
        assert {k: v.tolist() for k, v in b.splits.items()} == {
            k: v.tolist() for k, v in a.splits.items()}
