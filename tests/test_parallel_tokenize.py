"""A file tokenised in parts on several processes gives the ids and types of one pass, and the
same one-line errors; the worker program stays light (no torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnlab import fast
from rnnlab.data.prepared import Source, prepare
from rnnlab.data.stream_tokenize import StreamTokenizer, line_spans
from rnnlab.errors import RnnlabError
from rnnlab.fast import parallel_tokenize

# A byte-order mark opening the file and again inside it (a plain character there), CRLF and
# lone CR, blank lines, multi-byte characters, Unicode separators, no newline at the end.
TEXT = ("\ufeffthe cat sat\r\non the mat\n\n   \n  a dog é 日本 😀\r\rthe end <unk> x\u2028"
        "y\u00a0z w\x0cq\n") * 40 + "the last line has no newline"


def _one_pass(path: Path, level: str, chunk_bytes: int) -> tuple[np.ndarray, list[str]]:
    tokenizer = StreamTokenizer(level)
    ids = np.concatenate(list(tokenizer.file_ids(path, chunk_bytes)))
    return ids.astype("<u4"), tokenizer.table.tokens()


def _in_parts(path: Path, level: str, chunk_bytes: int, parts: int,
              tmp_path: Path) -> tuple[np.ndarray, list[str], int]:
    tokenizer = StreamTokenizer(level)
    out_path = tmp_path / "ids.bin"
    with open(out_path, "wb") as out:
        count = fast.write_file_ids_in_parts(tokenizer, path, out, parts, "utf-8",
                                             chunk_bytes, tmp_path)
    return np.fromfile(out_path, "<u4"), tokenizer.table.tokens(), count


@pytest.mark.parametrize("level", ["word", "char"])
@pytest.mark.parametrize(("parts", "chunk_bytes"), [(2, 1 << 20), (3, 7), (5, 64)])
def test_parts_give_the_ids_and_types_of_one_pass(tmp_path: Path, level: str, parts: int,
                                                  chunk_bytes: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")  # the workers answer in UTF-8 anyway
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    assert len(line_spans(path, parts)) == parts
    ids, types = _one_pass(path, level, chunk_bytes)
    parted, parted_types, count = _in_parts(path, level, chunk_bytes, parts, tmp_path)
    assert count == ids.size
    assert parted_types == types
    assert np.array_equal(parted, ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.bin", "t.txt"]  # no leftovers


def test_line_spans_cover_the_file_and_start_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    data = TEXT.encode("utf-8")
    path.write_bytes(data)
    spans = line_spans(path, 4)
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(data[start - 1:start] == b"\n" for start, _ in spans[1:])
    (tmp_path / "one.txt").write_bytes(b"no line feed " * 100)
    assert line_spans(tmp_path / "one.txt", 4) == [(0, 1300)]


@pytest.mark.parametrize("bad", [b"ok \xff\xfe bad\n", b"ab\x00cd\n"])
@pytest.mark.parametrize("where", ["first part", "last part"])
def test_parts_report_the_error_one_pass_reports(
        tmp_path: Path, bad: bytes, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
    path = tmp_path / "bäd ファイル.txt"  # the message names it, whatever the locale
    text = TEXT.encode("utf-8").replace(b"no newline", b"end\n")
    path.write_bytes(bad + text if where == "first part" else text + bad)
    with pytest.raises(RnnlabError) as one_pass:
        _one_pass(path, "word", 1 << 20)
    with pytest.raises(RnnlabError) as parted:
        _in_parts(path, "word", 1 << 20, 3, tmp_path)
    assert str(parted.value) == str(one_pass.value)  # the byte offset counts from the file start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bäd ファイル.txt", "ids.bin"]


def test_a_file_of_blanks_is_refused_in_parts_too(tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_bytes(b" \n\t\n" * 100)
    with pytest.raises(RnnlabError, match="empty or only whitespace"):
        _in_parts(path, "char", 16, 3, tmp_path)


@pytest.mark.parametrize("level", ["word", "char"])
def test_prepared_folders_agree_with_the_switch_on_and_off(
        tmp_path: Path, level: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    monkeypatch.setattr(fast, "parts_for", lambda path, encoding: 3)  # whatever the cores
    source = Source("t", {"all": path}, level, [0.8, 0.1, 0.1], ("<unk>", "<eos>"))
    with fast.enabled_as(False):
        plain = prepare(source, tmp_path / "plain")
    with fast.enabled_as(True):
        parted = prepare(source, tmp_path / "parted")
    assert parted.vocab.itos == plain.vocab.itos
    for name in ("train.bin", "valid.bin", "test.bin", "vocab.json"):
        assert (parted.folder / name).read_bytes() == (plain.folder / name).read_bytes()


def test_parts_are_one_per_core_and_never_small(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"word\n" * 1000)  # 5,000 bytes
    monkeypatch.setattr(parallel_tokenize.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(parallel_tokenize, "MIN_PART_BYTES", 2000)
    assert fast.parts_for(path, "utf-8") == 2
    monkeypatch.setattr(parallel_tokenize, "MIN_PART_BYTES", 1000)
    assert fast.parts_for(path, "utf-8") == 4
    assert fast.parts_for(path, "utf-16") == 1  # a line-feed byte may be half a character
    monkeypatch.setattr(parallel_tokenize, "MIN_PART_BYTES", 10_000)
    assert fast.parts_for(path, "utf-8") == 1


def test_a_worker_that_dies_is_reported_in_one_line(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    # A worker killed by a signal, as the kernel's out-of-memory killer would kill it.
    dying = tmp_path / "python"
    dying.write_text("#!/bin/sh\nkill -9 $$\n")
    dying.chmod(0o755)
    monkeypatch.setattr(parallel_tokenize.sys, "executable", str(dying))
    with pytest.raises(RnnlabError, match=r"tokenising worker failed \(status -9.*RNNLAB_FAST=0"):
        _in_parts(path, "word", 1 << 20, 2, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.bin", "python", "t.txt"]


def test_the_worker_program_does_not_import_torch() -> None:
    code = ("import sys, rnnlab.data.stream_tokenize; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
