"""Vocab: a two-way map between tokens (words or characters) and integer ids."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from rnnlab.errors import RnnlabError

UNK = "<unk>"
UNK_CHAR = "\ufffd"  # the Unicode replacement character: one character, like the rest
EOS = "<eos>"
PAD = "<pad>"


class Vocab:
    """Tokens <-> ids with an unknown token.

    Args:
        tokens: the tokens in id order; every special must already be among them.
        level: ``"word"`` or ``"char"`` (decides how ids are joined back into text).
        unk: the token that unseen tokens map to, or ``None`` to make them an error.
    """

    def __init__(self, tokens: Sequence[str], *, level: str = "word", unk: str | None = UNK):
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise RnnlabError("vocabulary has duplicate tokens")
        if unk is not None and unk not in self.stoi:
            raise RnnlabError(f"vocabulary lacks its unknown token {unk!r}")
        self.level = level
        self.unk = unk

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        *,
        level: str = "word",
        specials: Sequence[str] = (UNK, EOS),
        min_freq: int = 1,
        max_size: int = 0,
        unk: str | None = UNK,
    ) -> Vocab:
        """Count ``tokens`` and keep those seen ``min_freq`` times, most frequent first.

        Ties are broken by first appearance, so the same text always gives the same ids.
        ``max_size`` (0: no limit) counts the specials too.
        """
        counts = Counter(tokens)
        kept = [t for t, c in counts.most_common() if c >= min_freq and t not in specials]
        if max_size:
            kept = kept[: max(0, max_size - len(specials))]
        return cls([*specials, *kept], level=level, unk=unk)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    @property
    def unk_id(self) -> int | None:
        return None if self.unk is None else self.stoi[self.unk]

    def id(self, token: str) -> int:
        index = self.stoi.get(token)
        if index is None:
            if self.unk is None:
                raise RnnlabError(f"token {token!r} is not in the vocabulary")
            return self.stoi[self.unk]
        return index

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.id(t) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def join(self, tokens: Sequence[str]) -> str:
        """Tokens back into text: words with spaces, characters as they are."""
        return ("" if self.level == "char" else " ").join(tokens)

    def to_dict(self) -> dict:
        return {"level": self.level, "unk": self.unk, "tokens": self.itos}

    @classmethod
    def from_dict(cls, raw: dict) -> Vocab:
        try:
            return cls(raw["tokens"], level=raw["level"], unk=raw["unk"])
        except (KeyError, TypeError) as exc:
            raise RnnlabError(f"vocabulary file is malformed (missing {exc})") from None

    def save(self, path: str | Path) -> None:
        from rnnlab.checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except RnnlabError as exc:
            raise RnnlabError(f"{path}: {exc}") from None
        except FileNotFoundError:
            raise RnnlabError(f"vocabulary file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RnnlabError(f"vocabulary file {path} is corrupted (not valid JSON)") from None
