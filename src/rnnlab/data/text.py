"""Reading text files and cutting them into tokens."""

from __future__ import annotations

from pathlib import Path

from rnnlab.data.vocab import EOS
from rnnlab.errors import RnnlabError


def read_text(path: str | Path) -> str:
    """The whole file as UTF-8 text; a clear error when missing, binary, not UTF-8 or empty."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RnnlabError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise RnnlabError(f"{path} is a directory, not a text file") from None
    if b"\x00" in raw:
        raise RnnlabError(f"{path} looks binary (it contains NUL bytes), not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RnnlabError(
            f"{path} is not valid UTF-8 (byte {exc.start}); convert it, e.g. iconv -t utf-8"
        ) from None
    text = text.removeprefix("\ufeff")  # before the emptiness check: a BOM alone is no text
    if not text.strip():
        raise RnnlabError(f"{path} is empty or only whitespace")
    return text


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
    return char_tokens(text) if level == "char" else word_tokens(text)


def split_text(text: str, fractions: list[float], level: str) -> list[str]:
    """Contiguous pieces of ``text`` (train, valid[, test]) by fractions of its length.

    Word-level text is cut at line boundaries so no sentence is split between sets;
    character text is cut at the exact character (the nanoGPT shakespeare_char split).
    """
    if level == "char":
        cuts = _cuts(len(text), fractions)
        return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    lines = text.splitlines(keepends=True)
    cuts = _cuts(len(lines), fractions)
    return ["".join(lines[a:b]) for a, b in zip([0, *cuts], [*cuts, len(lines)], strict=True)]


def _cuts(n: int, fractions: list[float]) -> list[int]:
    cuts, total = [], 0.0
    for f in fractions[:-1]:
        total += f
        cuts.append(round(n * total))
    return cuts
