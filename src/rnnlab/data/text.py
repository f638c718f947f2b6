"""Reading text files and cutting them into tokens: a language model's words or characters,
and a classifier's lower-cased words and punctuation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from rnnlab.data.vocab import EOS
from rnnlab.errors import RnnlabError


def read_text(path: str | Path) -> str:
    """The whole file as UTF-8 text with ``\\n`` line endings; a clear error when missing,
    binary, not UTF-8 or empty."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RnnlabError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise RnnlabError(f"{path} is a directory, not a text file") from None
    # The BOM goes before the emptiness check: a BOM alone is no text.
    text = decode_utf8(raw, str(path)).removeprefix("\ufeff")
    # Windows and old Mac line endings: one newline character at every level, never a "\r".
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise RnnlabError(f"{path} is empty or only whitespace")
    return text


def utf8_lines(handle: Iterable[bytes], path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) per physical line of a binary file, with the line named on
    NUL bytes or bad UTF-8; a byte-order mark on the first line is dropped."""
    for number, raw in enumerate(handle, start=1):
        line = decode_utf8(raw, f"{path}, line {number}")
        yield number, line.removeprefix("\ufeff") if number == 1 else line


def decode_utf8(raw: bytes, where: str) -> str:
    """``raw`` as UTF-8 text; one clear error naming ``where`` (a file, or a line of one) when
    it holds NUL bytes (a binary file) or is not UTF-8."""
    if b"\x00" in raw:
        raise RnnlabError(f"{where} looks binary (it contains NUL bytes), not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RnnlabError(f"{where} is not valid UTF-8 (byte {exc.start}); convert it, e.g. "
                          "iconv -t utf-8") from None


def word_tokens(text: str) -> list[str]:
    """Whitespace-separated words with ``<eos>`` at the end of every non-empty line."""
    tokens: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words:
            tokens.extend(words)
            tokens.append(EOS)
    return tokens


def char_tokens(text: str) -> list[str]:
    return list(text)


def tokenize(text: str, level: str) -> list[str]:
    """A language model's tokens of ``text`` at ``level`` (``"word"`` or ``"char"``)."""
    return char_tokens(text) if level == "char" else word_tokens(text)


_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A word is a run of letters/digits/underscores, with apostrophes allowed *inside* it ("don't",
# "rock'n'roll" stay one token); every other non-space character is a token of its own.
_CLASSIFIER_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'"})


def classifier_tokens(text: str, level: str = "word") -> list[str]:
    """A classifier's tokens: lower-cased words and punctuation, without markup or ``<eos>``;
    at ``level="char"`` the text's characters as written (case kept: a name's capital is part
    of its spelling), without the whitespace around them.

    Unlike :func:`word_tokens`, which keeps a corpus's own tokenisation, this reads raw reviews:
    HTML line breaks (``<br />``, ``<br/>``, ``<br>``) become spaces, curly apostrophes become
    ``'``, apostrophes inside words are kept (``"don't"`` is one token) and every other
    punctuation character is split off on its own: ``"Great!!"`` -> ``great ! !``.
    """
    if level == "char":
        return list(text.strip())
    return _CLASSIFIER_TOKEN.findall(_BREAK.sub(" ", text).lower().translate(_QUOTES))


def split_text(text: str, fractions: list[float], level: str) -> list[str]:
    """Contiguous pieces of ``text`` (train, valid[, test]) cut at fractions of its tokens.

    Character text is cut at the exact character (the nanoGPT shakespeare_char split). Word
    text is cut between the tokens where ``split_tokens`` cuts its ``word_tokens``, whatever the
    line structure (one long line is cut too); a cut inside a line leaves the spaces before
    the next word with the earlier piece.
    """
    if level == "char":
        cuts = _cuts(len(text), fractions)
        return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    offsets = _token_ends(text, token_cuts(word_tokens(text), fractions))
    return [text[a:b] for a, b in zip([0, *offsets], [*offsets, len(text)], strict=True)]


def split_tokens(tokens: list[str], fractions: list[float]) -> list[list[str]]:
    """Contiguous runs of ``tokens`` (train, valid[, test]) at the ``token_cuts``."""
    cuts = token_cuts(tokens, fractions)
    return [tokens[a:b] for a, b in zip([0, *cuts], [*cuts, len(tokens)], strict=True)]


# How far (a fraction of all tokens) a cut may move to the nearest line end.
LINE_SNAP = 0.01


def token_cuts(tokens: list[str], fractions: list[float]) -> list[int]:
    """Token indices that cut ``tokens`` by ``fractions``, each moved to the nearest line end.

    A cut moves to the nearest ``<eos>`` boundary when one lies within ``LINE_SNAP`` of all the
    tokens and within half of either neighbouring piece, so that ordinary text keeps its
    sentences whole while a text of one long line is still cut at the exact fraction.
    """
    n = len(tokens)
    exact = _cuts(n, fractions)
    bounds = [0, *exact, n]
    cuts = []
    for i, cut in enumerate(exact):
        smaller = min(cut - bounds[i], bounds[i + 2] - cut)
        reach = min(int(n * LINE_SNAP), (smaller - 1) // 2)
        cuts.append(_nearest_line_end(tokens, cut, reach))
    return cuts


def _nearest_line_end(tokens: list[str], cut: int, reach: int) -> int:
    """The index after an ``<eos>`` closest to ``cut`` within ``reach`` tokens, else ``cut``."""
    if reach < 0 or EOS not in tokens[max(0, cut - reach - 1) : cut + reach]:
        return cut  # one search in C first: character text has no <eos> at all
    for distance in range(reach + 1):
        for index in (cut - distance, cut + distance):
            if 0 < index <= len(tokens) and tokens[index - 1] == EOS:
                return index
    return cut


def _token_ends(text: str, cuts: list[int]) -> list[int]:
    """Character offsets in ``text`` just past the ``cut``-th word token, for each of ``cuts``.

    Mirrors ``word_tokens``: an ``<eos>`` token ends past its line's line break.
    """
    offsets, seen, start = [], 0, 0
    pending = iter(cuts)
    cut = next(pending, None)
    for line in text.splitlines(keepends=True):
        words = line.split()
        count = len(words) + 1 if words else 0
        while cut is not None and cut <= seen + count:
            if cut == seen:
                offsets.append(start)
            elif cut == seen + count:
                offsets.append(start + len(line))
            else:  # inside the line: past the (cut - seen)-th word
                ends = [m.end() for m in re.finditer(r"\S+", line)]
                offsets.append(start + ends[cut - seen - 1])
            cut = next(pending, None)
        seen += count
        start += len(line)
    while cut is not None:  # only ever len(tokens): the end of the text
        offsets.append(len(text))
        cut = next(pending, None)
    return offsets


def _cuts(n: int, fractions: list[float]) -> list[int]:
    cuts, total = [], 0.0
    for f in fractions[:-1]:
        total += f
        cuts.append(round(n * total))
    return cuts
