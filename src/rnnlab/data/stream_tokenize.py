"""Streaming tokenisation: a text file read in chunks becomes arrays of type ids.

The tokens are exactly those of ``tokenize(read_text(path), level)`` (see ``rnnlab.data.text``):
the same decoding, byte-order mark, line-ending normalisation and errors, and at word level the
same ``<eos>`` after every line that has a word in it. The file is never held as one string:
each chunk is decoded incrementally (a chunk may end inside a UTF-8 character or a CRLF pair),
split into tokens by C-level ``str.split``, and looked up per token in one ``dict``, except that
characters are looked up once per distinct code point (``np.unique``).

Ids are *provisional*: a type's id is its rank of first appearance, so that the final vocabulary
(most frequent first, ties by first appearance) can be made from counts over any prefix without
reading the text again.

A file can also be read a byte range at a time (``span``, cut at line starts by
``line_spans``); run as a program, this module tokenises one such range for
``rnnlab.fast.parallel_tokenize``, which gives each core one.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterable, Iterator
from itertools import repeat
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rnnlab.data.vocab import EOS
from rnnlab.errors import RnnlabError

CHUNK_BYTES = 4 << 20
# Stands for a line end among the words: never in a text, since texts with NUL are refused.
MARK = "\x00"
# Every character str.splitlines() breaks at once "\r" is normalised away; all are whitespace.
LINE_BREAKS = frozenset("\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


class TypeTable:
    """Token string <-> provisional id, ids given in order of first appearance."""

    def __init__(self, seed: Iterable[str] = ()):
        self.ids: dict[str, int] = {}
        for token in seed:
            self.ids.setdefault(token, len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def tokens(self) -> list[str]:
        return list(self.ids)  # a dict keeps insertion order: position == id

    def lookup(self, tokens: list[str]) -> np.ndarray:
        """(N,) int64 ids of ``tokens``; new ones are added in the order they appear."""
        ids = np.fromiter(map(self.ids.get, tokens, repeat(-1)), np.int64, len(tokens))
        for i in np.flatnonzero(ids < 0).tolist():
            ids[i] = self.ids.setdefault(tokens[i], len(self.ids))
        return ids

    def lookup_chars(self, text: str) -> np.ndarray:
        """(len(text),) int64 ids of the characters of ``text``: one lookup per distinct one."""
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
        unique, first, inverse = np.unique(points, return_index=True, return_inverse=True)
        chars = [chr(c) for c in unique.tolist()]
        table = np.fromiter(map(self.ids.get, chars, repeat(-1)), np.int64, len(chars))
        new = np.flatnonzero(table < 0)
        for j in new[np.argsort(first[new], kind="stable")].tolist():
            table[j] = self.ids.setdefault(chars[j], len(self.ids))
        return table[inverse.reshape(-1)]


def read_pieces(path: str | Path, chunk_bytes: int = CHUNK_BYTES, encoding: str = "utf-8",
                span: tuple[int, int] | None = None) -> Iterator[str]:
    """Consecutive pieces of the file's text; joined, they equal ``read_text(path)``.

    Raises the same one-line errors as ``read_text`` (missing, directory, NUL bytes, invalid
    UTF-8 with the byte offset); whether the text is only blanks is the reader's to say.
    ``span``: only the bytes from ``start`` to ``stop``, a part that :func:`line_spans` cut at
    line starts.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise RnnlabError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise RnnlabError(f"{path} is a directory, not a text file") from None
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset, stop = span or (0, None)
    started, held = offset > 0, ""  # a byte-order mark opens only a file
    with handle:
        handle.seek(offset)
        while True:
            raw = handle.read(chunk_bytes if stop is None else min(chunk_bytes, stop - offset))
            final = not raw
            if b"\x00" in raw:
                raise RnnlabError(f"{path} looks binary (it contains NUL bytes), not text")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final)
            except UnicodeDecodeError as exc:
                raise RnnlabError(
                    f"{path} is not valid UTF-8 (byte {offset - pending + exc.start}); "
                    "convert it, e.g. iconv -t utf-8"
                ) from None
            offset += len(raw)
            if text and not started:
                text, started = text.removeprefix("\ufeff"), True
            text, held = held + text, ""
            if not final and text.endswith("\r"):  # maybe the first half of a CRLF pair
                text, held = text[:-1], "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if final:
                break


def line_spans(path: str | Path, parts: int) -> list[tuple[int, int]]:
    """(start, stop) byte ranges covering the file in order, about equal, each after the first
    starting just past a line feed. Only for encodings where that byte is always a line feed
    (UTF-8, ASCII), so that every part decodes and tokenises on its own."""
    size = Path(path).stat().st_size
    cuts = [0]
    with open(path, "rb") as handle:
        for k in range(1, parts):
            position = max(size * k // parts, cuts[-1])
            handle.seek(position)
            while block := handle.read(1 << 20):
                found = block.find(b"\n")
                if found >= 0:
                    position += found + 1
                    break
                position += len(block)
            cuts.append(position)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


class StreamTokenizer:
    """Provisional ids of files' tokens at ``level``, all sharing one :class:`TypeTable`.

    At word level the table starts with ``<eos>`` (id 0) and the line-end mark (id 1, never
    emitted), so that ``<eos>`` has a known id for cutting at line ends.
    """

    def __init__(self, level: str):
        self.level = level
        self.table = TypeTable([EOS, MARK] if level == "word" else [])
        self.eos_id = 0 if level == "word" else None
        self.saw_text = False  # whether the last file (or span) read had text besides blanks

    def file_ids(self, path: str | Path, chunk_bytes: int = CHUNK_BYTES,
                 encoding: str = "utf-8", span: tuple[int, int] | None = None,
                 ) -> Iterator[np.ndarray]:
        """(n,) int64 provisional ids of the file's tokens (or of ``span`` of its bytes, see
        :func:`read_pieces`), a chunk at a time, in order. A whole file of blanks is refused
        after it was read, as ``read_text`` refuses it."""
        yield from self._ids(self._watched(read_pieces(path, chunk_bytes, encoding, span)))
        if span is None and not self.saw_text:
            raise RnnlabError(f"{Path(path)} is empty or only whitespace")

    def write_ids(self, path: str | Path, out: BinaryIO, chunk_bytes: int = CHUNK_BYTES,
                  encoding: str = "utf-8", span: tuple[int, int] | None = None) -> int:
        """Write :meth:`file_ids` to ``out`` as little-endian uint32; returns how many."""
        count = 0
        for ids in self.file_ids(path, chunk_bytes, encoding, span):
            out.write(ids.astype("<u4").tobytes())
            count += ids.size
        return count

    def _ids(self, pieces: Iterator[str]) -> Iterator[np.ndarray]:
        if self.level == "char":
            for piece in pieces:
                yield self.table.lookup_chars(piece)
            return
        carry, after_word = "", False
        for piece in pieces:
            text = carry + piece
            carry = ""
            if not text[-1].isspace():  # keep a word the chunk may have cut for the next one
                carry = text.rsplit(None, 1)[-1]
                text = text[: len(text) - len(carry)]
            if text:
                ids, after_word = self._words(text, text[-1] in LINE_BREAKS, after_word)
                yield ids
        ids, _ = self._words(carry, True, after_word)  # the end of the file ends its last line
        yield ids

    def _watched(self, pieces: Iterator[str]) -> Iterator[str]:
        self.saw_text = False
        for piece in pieces:
            self.saw_text = self.saw_text or not piece.isspace()
            yield piece

    def _words(self, text: str, ends_line: bool, after_word: bool) -> tuple[np.ndarray, bool]:
        """Ids of the words of ``text`` with ``<eos>`` after each line that had a word.

        ``after_word``: the token before ``text`` was a word of a line not yet ended.
        """
        joined = f" {MARK} ".join(text.splitlines())
        if ends_line:
            joined += f" {MARK}"
        ids = self.table.lookup(joined.split())
        if ids.size == 0:
            return ids, after_word
        mark = ids == 1
        follows_word = np.empty_like(mark)
        follows_word[0] = after_word
        follows_word[1:] = ~mark[:-1]
        ids[mark] = 0
        return ids[~mark | follows_word], not bool(mark[-1])


def tokenize_span(path: str, span: tuple[int, int], level: str, encoding: str,
                  chunk_bytes: int, out_path: str) -> tuple[list[str], int, bool]:
    """A part of a file tokenised on its own (in a worker process): its provisional ids, in
    a table of its own, written to ``out_path`` as little-endian uint32. Returns that table's
    types in id order, the number of ids and whether the part had text besides blanks."""
    tokenizer = StreamTokenizer(level)
    with open(out_path, "wb") as out:
        count = tokenizer.write_ids(path, out, chunk_bytes, encoding, span)
    return tokenizer.table.tokens(), count, tokenizer.saw_text


def _worker(argv: list[str]) -> int:
    """``python -m rnnlab.data.stream_tokenize PATH START STOP LEVEL ENCODING CHUNK OUT``:
    :func:`tokenize_span`, its result as JSON on stdout; a user's error as one line on stderr,
    status 2. A program of its own, so that no caller's main module is imported again."""
    path, start, stop, level, encoding, chunk, out_path = argv
    try:
        types, count, saw_text = tokenize_span(path, (int(start), int(stop)), level, encoding,
                                               int(chunk), out_path)
    except RnnlabError as exc:  # UTF-8 whatever the locale: the caller reads it as such
        sys.stderr.buffer.write(f"{exc}\n".encode("utf-8", "backslashreplace"))
        return 2
    result = {"types": types, "count": count, "saw_text": saw_text}
    sys.stdout.buffer.write(json.dumps(result, ensure_ascii=False).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
