"""Prepared corpora: token ids on disk, memory-mapped, so a corpus of any size starts in seconds.

A corpus is prepared once into ``DATA_DIR/prepared/<name>-<key>/``: one flat little-endian
array per split (``train.bin``, ...; uint16 when the vocabulary fits, else uint32), the
vocabulary (``vocab.json``) and ``header.json``, written last, which makes the folder valid.
The key hashes the sources' absolute paths, the tokenisation settings and the vocabulary (when one
is imposed, as in evaluation), so ``--train FILE`` runs share the data directory's cache too.

The header records each source's size, mtime and the sha256 of its first and last MiB rather
than a full hash: hashing gigabytes would cost a full read on every start, while size and mtime
catch ordinary edits and the two hashes catch a same-size rewrite with its time preserved. A
header, vocabulary or array that does not match is rebuilt, never used. Processes preparing the
same corpus take an ``fcntl`` lock: one prepares, the others wait and then map its files.

Preparation reads the text once (``rnnlab.data.stream_tokenize``; a large file on all cores, see
``rnnlab.fast.parallel_tokenize``) into provisional ids, counts the training part to build the
vocabulary by the same rules as ``Vocab.build``, then remaps.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnlab import fast
from rnnlab.atomic import atomic_open, atomic_write_text
from rnnlab.data.stream_tokenize import CHUNK_BYTES, StreamTokenizer
from rnnlab.data.text import LINE_SNAP, _cuts
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError

FORMAT = 1
BLOCK = 1 << 24  # tokens per block when counting and remapping: bounded memory
_EDGE = 1 << 20  # bytes hashed at each end of a source file


@dataclass
class Source:
    """What to prepare: ``files`` by split, or one file cut by ``split`` fractions."""

    name: str  # a readable label for the folder
    files: dict[str, Path]  # split -> file; {"all": file} when cut by fractions
    level: str
    split: list[float]
    specials: tuple[str, ...]
    min_freq: int = 1
    max_vocab: int = 0
    encoding: str = "utf-8"

    def settings(self) -> dict:
        return {"format": FORMAT, "level": self.level, "encoding": self.encoding,
                "files": {k: str(v.resolve()) for k, v in self.files.items()},
                "split": self.split if "all" in self.files else None,
                "specials": list(self.specials), "min_freq": self.min_freq,
                "max_vocab": self.max_vocab}


@dataclass
class Prepared:
    """A prepared corpus mapped into memory: ``splits`` are (N,) uint16/uint32 views of files."""

    folder: Path
    vocab: Vocab
    splits: dict[str, torch.Tensor]
    unknown: dict[str, int]
    status: str  # "reused", "built" or "rebuilt (<why>)"


def vocab_hash(vocab: Vocab) -> str:
    text = json.dumps(vocab.to_dict(), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(path: Path) -> dict:
    """Size, mtime and the sha256 of the first and last MiB of ``path``."""
    stat = path.stat()
    with open(path, "rb") as handle:
        head = hashlib.sha256(handle.read(_EDGE)).hexdigest()
        handle.seek(max(0, stat.st_size - _EDGE))
        tail = hashlib.sha256(handle.read(_EDGE)).hexdigest()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "head_sha256": head, "tail_sha256": tail}


def folder_for(source: Source, root: Path, vocab: Vocab | None) -> Path:
    settings = dict(source.settings(), vocab=None if vocab is None else vocab_hash(vocab))
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return root / "prepared" / f"{source.name}-{key}"


def prepare(source: Source, root: Path, vocab: Vocab | None = None, *,
            chunk_bytes: int = CHUNK_BYTES) -> Prepared:
    """Map the prepared corpus of ``source`` under ``root``, preparing it first if needed.

    With ``vocab`` (evaluating a trained run) the ids are those of that vocabulary: the folder
    prepared with the vocabulary built from the same text is used when that is the same one.
    """
    if vocab is not None:
        built = folder_for(source, root, None)
        with _locked(built):
            problem, found = _check(built, source, vocab_hash(vocab))
            if problem is None:
                return _open(built, "reused", found)
    folder = folder_for(source, root, vocab)
    with _locked(folder):
        problem, found = _check(folder, source, None if vocab is None else vocab_hash(vocab))
        if problem is None:
            return _open(folder, "reused", found)
        _build(folder, source, vocab, chunk_bytes)
        status = "built" if problem == "missing" else f"rebuilt ({problem})"
        return _open(folder, status)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file beside it) for the block."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _check(folder: Path, source: Source, expected_vocab: str | None,
           ) -> tuple[str | None, Vocab | None]:
    """Why ``folder`` cannot be used as it is, or ``None`` and the vocabulary it holds (read
    for the check, so that opening the folder need not read it again)."""
    try:
        header = json.loads((folder / "header.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing", None
    except (OSError, ValueError):
        return "header unreadable", None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return "header format", None
    if header.get("settings") != source.settings():
        return "settings changed", None
    try:
        current = [fingerprint(Path(f["path"])) for f in header["sources"]]
    except (OSError, KeyError, TypeError):
        return "source missing", None
    if current != header["sources"]:
        return "source changed", None
    try:
        vocab = Vocab.load(folder / "vocab.json")
    except RnnlabError:
        return "vocabulary unreadable", None
    if vocab_hash(vocab) != header.get("vocab_sha256"):
        return "vocabulary changed", None
    if expected_vocab is not None and expected_vocab != header["vocab_sha256"]:
        return "another vocabulary", None
    itemsize = np.dtype(header.get("dtype", "?")).itemsize if header.get("dtype") in (
        "<u2", "<u4") else 0
    for name, split in header.get("splits", {}).items():
        path = folder / f"{name}.bin"
        if not itemsize or not path.is_file() or path.stat().st_size != split["tokens"] * itemsize:
            return f"{name}.bin size", None
    return None, vocab


def _open(folder: Path, status: str, vocab: Vocab | None = None) -> Prepared:
    """Map ``folder``'s ids; ``vocab``: its vocabulary when the caller has already read it."""
    header = json.loads((folder / "header.json").read_text(encoding="utf-8"))
    vocab = vocab if vocab is not None else Vocab.load(folder / "vocab.json")
    splits, unknown = {}, {}
    for name, split in header["splits"].items():
        splits[name] = _map(folder / f"{name}.bin", np.dtype(header["dtype"]), split["tokens"])
        unknown[name] = split["unknown"]
    return Prepared(folder, vocab, splits, unknown, status)


def _map(path: Path, dtype: np.dtype, count: int) -> torch.Tensor:
    """(count,) ids viewing the file: pages are read when touched, never copied whole."""
    if count == 0:
        return torch.from_numpy(np.zeros(0, dtype))
    # "c" (copy-on-write) gives a writable array, which torch wants, over a read-only file.
    return torch.from_numpy(np.memmap(path, dtype=dtype, mode="c", shape=(count,)))


def _build(folder: Path, source: Source, vocab: Vocab | None, chunk_bytes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "header.json").unlink(missing_ok=True)  # the folder is invalid until rewritten
    tokenizer = StreamTokenizer(source.level)
    fd, tmp = tempfile.mkstemp(prefix=".provisional.", suffix=".tmp", dir=folder)
    try:
        ends, position = {}, 0
        with os.fdopen(fd, "wb") as out:
            for name, path in source.files.items():
                parts = fast.parts_for(path, source.encoding) if fast.enabled() else 1
                if parts > 1:  # fast path: the same ids, the file cut across cores
                    position += fast.write_file_ids_in_parts(
                        tokenizer, path, out, parts, source.encoding, chunk_bytes, folder)
                else:
                    position += tokenizer.write_ids(path, out, chunk_bytes, source.encoding)
                ends[name] = position
        provisional = _FileIds(tmp, position)
        ranges = _ranges(provisional, ends, source, tokenizer)
        if vocab is None:
            vocab = _build_vocab(provisional, ranges["train"], tokenizer.table.tokens(), source)
        _write(folder, source, vocab, tokenizer.table.tokens(), provisional, ranges)
    finally:
        os.unlink(tmp)


class _FileIds:
    """(size,) uint32 ids in a file, read a slice at a time: unlike a mapping, a full pass does
    not leave the whole file resident in this process."""

    def __init__(self, path: str, size: int):
        self.path, self.size = path, size

    def __getitem__(self, span: slice) -> np.ndarray:
        start, stop, _ = span.indices(self.size)
        return np.fromfile(self.path, dtype="<u4", count=max(0, stop - start), offset=4 * start)


def _ranges(ids: _FileIds, ends: dict[str, int], source: Source,
            tokenizer: StreamTokenizer) -> dict[str, tuple[int, int]]:
    """Each split's (start, stop) in the provisional ids, as ``lm.data`` makes them."""
    if "all" not in source.files:
        starts = [0, *ends.values()][:-1]
        ranges = {name: (a, b) for (name, b), a in zip(ends.items(), starts, strict=True)}
        if ranges["train"][1] == ranges["train"][0]:
            raise RnnlabError("the training text has no tokens")
        return ranges
    n = ids.size
    cuts = _line_cuts(ids, source.split, tokenizer.eos_id)
    bounds = list(zip([0, *cuts], [*cuts, n], strict=True))
    types = tokenizer.table.tokens()
    if tokenizer.eos_id is None:  # as lm.data: a piece of blanks only is no text
        text = np.array([not t.isspace() for t in types], dtype=bool)
    else:  # words are never blank; a piece of line ends only is no text either
        text = np.ones(len(types), dtype=bool)
        text[tokenizer.eos_id] = False
    named = dict(zip(("train", "valid", "test"), bounds, strict=False))
    has_text = {name: _any(ids, a, b, text) for name, (a, b) in named.items()}
    for name in ("train", "valid"):
        if not has_text[name]:
            raise RnnlabError(
                f"the text is too short to split into train/valid by {source.split}: "
                f"the {name} part is empty")
    return {name: r for name, r in named.items() if has_text[name]}


def _line_cuts(ids: _FileIds, fractions: list[float], eos: int | None) -> list[int]:
    """``rnnlab.data.text.token_cuts`` on an id array: each cut moved to a near line end."""
    n = ids.size
    exact = _cuts(n, fractions)
    bounds = [0, *exact, n]
    cuts = []
    for i, cut in enumerate(exact):
        reach = min(int(n * LINE_SNAP), (min(cut - bounds[i], bounds[i + 2] - cut) - 1) // 2)
        if reach < 0 or eos is None:
            cuts.append(cut)
            continue
        start = max(0, cut - reach - 1)
        index = np.flatnonzero(ids[start:cut + reach] == eos) + start + 1  # just past an <eos>
        index = index[(index > 0) & (index <= n) & (np.abs(index - cut) <= reach)]
        # Nearest wins; between two equally near, the earlier one (as token_cuts searches).
        cuts.append(int(index[np.argmin(np.abs(index - cut))]) if index.size else cut)
    return cuts


def _any(ids: _FileIds, start: int, stop: int, mask: np.ndarray) -> bool:
    return any(mask[ids[a:min(a + BLOCK, stop)]].any() for a in range(start, stop, BLOCK))


def _build_vocab(ids: _FileIds, train: tuple[int, int], types: list[str],
                 source: Source) -> Vocab:
    """``Vocab.build`` over the training tokens, from their counts in first-appearance order."""
    counts = np.zeros(len(types), np.int64)
    for a in range(train[0], train[1], BLOCK):
        counts += np.bincount(ids[a:min(a + BLOCK, train[1])], minlength=len(types))
    seen = np.flatnonzero(counts)  # ascending provisional id == order of first appearance
    counter = Counter({types[i]: int(counts[i]) for i in seen.tolist()})
    return Vocab.build(counter, level=source.level, specials=source.specials,
                       min_freq=source.min_freq, max_size=source.max_vocab,
                       unk=source.specials[0])


def _write(folder: Path, source: Source, vocab: Vocab, types: list[str], ids: _FileIds,
           ranges: dict[str, tuple[int, int]]) -> None:
    dtype = np.dtype("<u2") if len(vocab) <= 1 << 16 else np.dtype("<u4")
    unk = vocab.stoi[vocab.unk]
    lookup = np.fromiter((vocab.stoi.get(t, unk) for t in types), np.int64, len(types))
    unknown_type = np.array([t not in vocab.stoi for t in types], dtype=bool)
    splits = {}
    for name, (start, stop) in ranges.items():
        unknown = 0
        with atomic_open(folder / f"{name}.bin") as out:
            for a in range(start, stop, BLOCK):
                block = ids[a:min(a + BLOCK, stop)]
                out.write(lookup[block].astype(dtype).tobytes())
                unknown += int(unknown_type[block].sum())
        splits[name] = {"tokens": stop - start, "unknown": unknown}
    vocab.save(folder / "vocab.json")
    header = {"format": FORMAT, "settings": source.settings(), "dtype": dtype.str,
              "vocab_sha256": vocab_hash(vocab), "vocab_size": len(vocab), "splits": splits,
              "sources": [fingerprint(p) for p in source.files.values()]}
    atomic_write_text(folder / "header.json", json.dumps(header, indent=1) + "\n")
