"""Labelled text for classification: tokenizing, reading files, IMDB, vocab, splits, batches.

Pipeline: read (text, label) records from CSV/TSV/JSONL(.gz) files or the ``imdb`` corpus ->
:func:`tokenize` -> truncate to ``max_length`` tokens -> ids in a :class:`Vocab` whose id 0 is
``<pad>`` -> :class:`EncodedSet` -> length-bucketed :class:`Batch` es of (tokens, lengths, labels).

Labels are kept as strings (JSON integers become their decimal text) and their names sorted
deterministically (numerically when every name is an integer, else alphabetically); a label's
index in that list is its class id. IMDB's 0/1 labels are named ``neg``/``pos``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rnnlab.atomic import atomic_open
from rnnlab.data.corpora import (
    CORPORA,
    Corpus,
    RemoteFile,
    corpus_files,
    data_dir,
    register,
)
from rnnlab.data.download import download, sha256_of
from rnnlab.data.vocab import PAD, UNK, Vocab
from rnnlab.errors import RnnlabError

SPECIALS = (PAD, UNK)  # <pad> = 0, <unk> = 1
PAD_ID = 0
FORMATS = (".csv", ".tsv", ".jsonl", ".ndjson")  # each optionally followed by .gz

# --- tokenizer -------------------------------------------------------------------------------

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A word is a run of letters/digits/underscores, with apostrophes allowed *inside* it ("don't",
# "rock'n'roll" stay one token); every other non-space character is a token of its own.
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'"})


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens.

    HTML line breaks (``<br />``, ``<br/>``, ``<br>``) become spaces, curly apostrophes become
    ``'``, apostrophes inside words are kept (``"don't"`` is one token) and every other
    punctuation character is split off on its own: ``"Great!!"`` -> ``great ! !``.
    """
    return _TOKEN.findall(_BREAK.sub(" ", text).lower().translate(_QUOTES))


# --- reading labelled files ------------------------------------------------------------------


@dataclass
class Examples:
    """Labelled texts read from one source; ``lines[i]`` is where record ``i`` ends."""

    texts: list[str]
    labels: list[str]
    lines: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int]) -> Examples:
        return Examples([self.texts[i] for i in index], [self.labels[i] for i in index],
                        [self.lines[i] for i in index], self.source)


def read_examples(
    path: str | Path, *, text_field: str = "text", label_field: str = "label",
    rename: dict[str, str] | None = None,
) -> Examples:
    """Read (text, label) records from a ``.csv``/``.tsv``/``.jsonl``/``.ndjson`` file (or the
    same gzip-compressed, ``.gz``), choosing the format by extension.

    CSV/TSV need a header row naming the columns (TSV is read unquoted: one record per line).
    ``rename`` maps label names, e.g. ``{"0": "neg", "1": "pos"}``.
    """
    path = Path(path)
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    for line, record in records(path):
        text = _field(record, text_field, "text", path, line)
        label = _label(_field(record, label_field, "label", path, line), path, line)
        if not isinstance(text, str):
            raise RnnlabError(f"{path}, line {line}: field '{text_field}' is not a string")
        if not text.strip():
            raise RnnlabError(f"{path}, line {line}: the text is empty")
        texts.append(text)
        labels.append(rename.get(label, label) if rename else label)
        lines.append(line)
    if not texts:
        raise RnnlabError(f"{path} contains no examples (the file is empty)")
    return Examples(texts, labels, lines, str(path))


def records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a table or JSON-lines file (gzipped or not), by extension;
    unreadable files raise :class:`RnnlabError`."""
    fmt = _format_of(path)
    if not path.is_file():
        raise RnnlabError(f"file not found: {path}" if not path.exists()
                          else f"{path} is not a file")
    reader = _json_records if fmt in (".jsonl", ".ndjson") else _table_records
    try:
        with _open_binary(path) as handle:
            yield from reader(_decoded_lines(handle, path), path, fmt)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise RnnlabError(f"{path} is not a readable gzip file ({exc})") from None
    except OSError as exc:
        raise RnnlabError(f"cannot read {path} ({exc.strerror or exc})") from None


def _format_of(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for fmt in FORMATS:
        if name.endswith(fmt):
            return fmt
    raise RnnlabError(
        f"cannot tell the format of {path}: use a .csv, .tsv, .jsonl or .ndjson file "
        "(optionally .gz-compressed)"
    )


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _decoded_lines(handle: io.BufferedIOBase, path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) per physical line, with the line named on bad UTF-8."""
    for number, raw in enumerate(handle, start=1):
        if b"\x00" in raw:
            raise RnnlabError(f"{path}, line {number} contains NUL bytes: is this a text file?")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RnnlabError(
                f"{path}, line {number} is not valid UTF-8 (byte {exc.start} of the line); "
                "convert the file, e.g. iconv -t utf-8"
            ) from None
        yield number, line.removeprefix("\ufeff") if number == 1 else line


def _json_records(lines: Iterator[tuple[int, str]], path: Path, fmt: str
                  ) -> Iterator[tuple[int, dict]]:
    for number, line in lines:
        if not line.strip():
            continue  # blank lines (e.g. a trailing one) are not records
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RnnlabError(f"{path}, line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise RnnlabError(f"{path}, line {number}: expected a JSON object per line")
        yield number, record


def _table_records(lines: Iterator[tuple[int, str]], path: Path, fmt: str
                   ) -> Iterator[tuple[int, dict]]:
    current = [0]

    def text_lines() -> Iterator[str]:
        for number, line in lines:
            current[0] = number
            yield line

    options = ({"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == ".tsv" else {})
    limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)  # long reviews exceed the default 128 KiB per field
    try:
        reader = csv.DictReader(text_lines(), **options)
        for row in reader:
            if any(value not in (None, "") for value in row.values()):
                yield current[0], row
    except csv.Error as exc:
        raise RnnlabError(f"{path}, line {current[0]} is not valid {fmt[1:].upper()} ({exc})"
                          ) from None
    finally:
        csv.field_size_limit(limit)


def _field(record: dict, name: str, role: str, path: Path, line: int) -> object:
    if name not in record:
        have = ", ".join(repr(k) for k in record if k is not None) or "none"
        raise RnnlabError(
            f"{path}, line {line}: no {role} field '{name}' (fields: {have}); "
            f"set data.{role}_field"
        )
    value = record[name]
    if value is None:
        raise RnnlabError(f"{path}, line {line}: the {role} field '{name}' has no value")
    return value


def _label(value: object, path: Path, line: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise RnnlabError(
        f"{path}, line {line}: the label must be a non-empty string or an integer, got {value!r}"
    )


def label_names(labels: Sequence[str]) -> list[str]:
    """The distinct labels, numerically sorted when all are integers, else alphabetically."""
    names = set(labels)
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def check_labels(train: Examples, names: Sequence[str], others: Sequence[Examples]) -> None:
    """At least two classes in training, and no label anywhere outside ``names``."""
    present = sorted(set(train.labels))
    if len(present) < 2:
        only = f" ('{present[0]}')" if present else ""
        raise RnnlabError(
            f"{train.source}: the training data has only one class{only}; a classifier needs "
            "at least 2 (check data.label_field)"
        )
    known = set(names)
    for examples in (train, *others):
        for label, line in zip(examples.labels, examples.lines, strict=True):
            if label not in known:
                raise RnnlabError(
                    f"{examples.source}, line {line}: label '{label}' is not one of the classes "
                    f"of the training data ({', '.join(names)})"
                )


# --- IMDB ------------------------------------------------------------------------------------

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_LABELS = {"0": "neg", "1": "pos"}  # label 1 = positive review (rating >= 7)
IMDB_SPLITS = ("train", "test", "unsup")
# sha256 of the converted files; the conversion is deterministic (sorted records, gzip level 9,
# mtime 0), so a conversion of the canonical archive reproduces these bytes.
_IMDB_FILE_SHA256 = {
    "train": "8419983c789ed2e7bc709881774d85a8c5a5b3b7a152de92fab157ab581f517f",
    "test": "f448a8762fd211a1cc656efe34fde4c274875b5d9e4438932fbd0f81670531b7",
    "unsup": "19b2b435368204e383b9fca84ce98000e19750736e7dfd34abd80b4708855879",
}
_IMDB_MEMBER = re.compile(r"(?:\./)?aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt")

register(Corpus(
    "imdb", "classify", "word",
    "IMDB movie reviews (Maas et al., 2011): 25k train / 25k test, pos vs neg, + 50k unlabelled",
    tuple(RemoteFile(split, f"imdb/{split}.jsonl.gz", IMDB_URL, _IMDB_FILE_SHA256[split])
          for split in IMDB_SPLITS),
    prepare=lambda base: prepare_imdb(base),
))
register(Corpus(
    "imdb-text", "lm", "word",
    "IMDB's 50k unlabelled + 25k training reviews as text (no test), to pretrain a classifier",
    tuple(f for f in CORPORA["imdb"].files if f.split != "test"),
    prepare=lambda base: prepare_imdb(base),
    read_text=lambda base: imdb_review_text(base),
))


def imdb_review_text(root: str | Path | None = None) -> str:
    """IMDB's unlabelled and training reviews, one per line, tokenised as the classifier
    tokenises them, so that a language model trained on it shares the classifier's words.
    The test reviews are left out: a model pretrained on them would have read the test set."""
    files = imdb_files(root)
    lines = [" ".join(tokenize(str(_field(record, "text", "text", files[split], line))))
             for split in ("unsup", "train") for line, record in records(files[split])]
    return "\n".join(lines) + "\n"


def imdb_files(
    root: str | Path | None = None, *, download_missing: bool = True, verify: bool = False
) -> dict[str, Path]:
    """``{"train", "test", "unsup"}`` -> the IMDB JSONL files, fetched and converted if missing.

    The three files are made from one archive, so a miss downloads ``aclImdb_v1.tar.gz``
    (sha256-checked), converts it once with :func:`convert_aclimdb` and deletes it.
    """
    base = data_dir(root)
    missing = [s for s in IMDB_SPLITS if not (base / "imdb" / f"{s}.jsonl.gz").exists()]
    if missing and download_missing:
        prepare_imdb(base)
    return corpus_files("imdb", base, download_missing=False, verify=verify)


def prepare_imdb(base: str | Path) -> None:
    """Convert ``base/imdb/aclImdb_v1.tar.gz`` (downloaded unless already there, sha256-checked
    either way) into the three JSONL files, then delete the archive."""
    folder = Path(base) / "imdb"
    archive = folder / IMDB_ARCHIVE
    if archive.exists():  # placed by hand, as the download error suggests when offline
        if sha256_of(archive) != IMDB_SHA256:
            raise RnnlabError(
                f"{archive} does not match the expected sha256 {IMDB_SHA256}; delete it to "
                f"download it again from {IMDB_URL}"
            )
    else:
        download(IMDB_URL, archive, IMDB_SHA256)
    convert_aclimdb(archive, folder)
    archive.unlink()  # the three files hold everything the tasks use


def convert_aclimdb(archive: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Convert an ``aclImdb_v1.tar.gz`` into ``out_dir/{train,test,unsup}.jsonl.gz``.

    Labelled records are ``{"text", "label" (1 pos, 0 neg), "rating", "id"}`` and unlabelled
    ones ``{"text", "id"}``, with ``id`` the member path below ``aclImdb/`` without ``.txt``
    (e.g. ``train/pos/0_9``, rating 9). Records are sorted by review id, ``neg`` before ``pos``.
    Each file is written atomically, so an interrupted conversion leaves no partial file.
    """
    records: dict[str, list[tuple[tuple[int, str], dict]]] = {s: [] for s in IMDB_SPLITS}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                match = _IMDB_MEMBER.fullmatch(member.name)
                if not match or not member.isfile():
                    continue
                split, kind, review, rating = match.groups()
                text = tar.extractfile(member).read().decode("utf-8")
                record_id = f"{split}/{kind}/{review}_{rating}"
                if kind == "unsup":
                    records["unsup"].append(((int(review), kind), {"text": text, "id": record_id}))
                else:
                    record = {"text": text, "label": int(kind == "pos"), "rating": int(rating),
                              "id": record_id}
                    records[split].append(((int(review), kind), record))
    except (tarfile.TarError, EOFError, OSError, zlib.error, UnicodeDecodeError) as exc:
        raise RnnlabError(f"{archive} is not a readable IMDB archive ({exc})") from None
    if not records["train"] or not records["test"]:
        raise RnnlabError(f"{archive} holds no aclImdb/train or aclImdb/test reviews")
    out_dir = Path(out_dir)
    paths = {}
    for split, rows in records.items():
        rows.sort(key=lambda row: row[0])
        paths[split] = out_dir / f"{split}.jsonl.gz"
        _write_jsonl_gz(paths[split], (record for _, record in rows))
    return paths


def _write_jsonl_gz(path: Path, records: Iterator[dict]) -> None:
    """One JSON object per line, gzip level 9 with mtime 0 (reproducible bytes), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as raw, gzip.GzipFile(
        filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0
    ) as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")


def load_corpus(name: str, root: str | Path | None = None) -> dict[str, Examples]:
    """The labelled splits of a known classification corpus (``{"train", "test"}`` for imdb)."""
    if name != "imdb":
        raise RnnlabError(f"corpus '{name}' is not a classification corpus (known: imdb)")
    files = imdb_files(root)
    return {split: read_examples(files[split], rename=IMDB_LABELS) for split in ("train", "test")}


# --- splits, vocabulary, encoding -----------------------------------------------------------


def split_validation(
    labels: Sequence[str], fraction: float, seed: int, *, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, valid) indices with ``fraction`` of the examples in valid.

    Seeded, and stratified by label by default so that valid has the classes' proportions.
    """
    labels_array = np.asarray(labels)
    rng = np.random.default_rng(seed % 2**63)
    groups = ([np.flatnonzero(labels_array == c) for c in sorted(set(labels))] if stratify
              else [np.arange(len(labels_array))])
    valid_parts = []
    for group in groups:
        take = min(round(len(group) * fraction), len(group) - 1)  # keep one of each for training
        valid_parts.append(rng.permutation(group)[:take])
    valid = np.sort(np.concatenate(valid_parts)) if valid_parts else np.array([], dtype=np.int64)
    if valid.size == 0:
        raise RnnlabError(
            f"{len(labels_array)} examples are too few to hold out a validation fraction of "
            f"{fraction}; give --valid FILE or more data"
        )
    train = np.setdiff1d(np.arange(len(labels_array)), valid)
    return train, valid


def split_examples(
    examples: Examples, fractions: Sequence[float], seed: int
) -> list[Examples]:
    """Cut one labelled file into train/valid[/test] by ``fractions`` (stratified, seeded)."""
    pieces, rest = [], examples
    remaining = 1.0
    for fraction in fractions[1:]:
        if fraction <= 0:
            pieces.append(None)
            continue
        keep, held = split_validation(rest.labels, fraction / remaining, seed)
        pieces.append(rest.subset(held))
        rest, remaining = rest.subset(keep), remaining - fraction
    return [rest, *pieces]


@dataclass
class Tokenized:
    """Texts as truncated token lists, interned to provisional ids (one table for all sets).

    A text without a single token (e.g. nothing but ``<br />``) has nothing to pool over, so it
    is left out of ``ids``; ``skipped`` holds the positions of such texts in the input.
    """

    ids: list[np.ndarray]
    truncated: int  # how many texts were longer than max_length (cut, not rejected)
    skipped: list[int] = field(default_factory=list)

    def keep(self, items: Sequence) -> list:
        """The entries of ``items`` (one per input text) whose texts are in ``ids``."""
        if not self.skipped:
            return list(items)
        left_out = set(self.skipped)
        return [item for i, item in enumerate(items) if i not in left_out]


@dataclass
class Interner:
    """Token strings -> provisional ids, so that 50k reviews are not held as Python strings."""

    index: dict[str, int] = field(default_factory=dict)

    def tokenize(self, texts: Sequence[str], max_length: int) -> Tokenized:
        ids, truncated, skipped, index = [], 0, [], self.index
        for position, text in enumerate(texts):
            tokens = tokenize(text)
            if not tokens:
                skipped.append(position)
                continue
            if len(tokens) > max_length:
                truncated += 1
                tokens = tokens[:max_length]
            # New tokens get ids in set order; that order never reaches the vocabulary, whose
            # ties are broken by position in the text (see build_vocab).
            for token in set(tokens).difference(index):
                index[token] = len(index)
            ids.append(np.fromiter(map(index.__getitem__, tokens), np.int64, len(tokens)))
        return Tokenized(ids, truncated, skipped)

    def tokens(self) -> list[str]:
        return list(self.index)


def build_vocab(
    interner: Interner, train: Sequence[np.ndarray], *, min_freq: int = 1, max_size: int = 0
) -> Vocab:
    """A vocabulary of the training tokens: ``<pad>`` (id 0), ``<unk>``, then the tokens seen
    ``min_freq`` times, most frequent first, ties by first appearance; ``max_size`` (0: no limit)
    counts the specials, as in :meth:`Vocab.build`."""
    flat = np.concatenate(list(train)) if len(train) else np.array([], dtype=np.int64)
    counts = np.bincount(flat, minlength=len(interner.index))
    first = np.zeros(len(counts), dtype=np.int64)
    seen, first_index = np.unique(flat, return_index=True)
    first[seen] = first_index
    order = np.lexsort((first, -counts))  # by count descending, then first appearance
    order = order[counts[order] >= min_freq]
    names = interner.tokens()
    kept = [names[i] for i in order if names[i] not in SPECIALS]
    if max_size:
        kept = kept[: max(0, max_size - len(SPECIALS))]
    return Vocab([*SPECIALS, *kept], level="word", unk=UNK)


@dataclass
class Batch:
    """Padded token ids (B, T) with <pad> = 0, true lengths (B,) and class ids (B,), on CPU."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class EncodedSet:
    """A labelled set as one flat id tensor with per-example offsets and lengths."""

    flat: torch.Tensor  # (N_tokens,) int64
    offsets: torch.Tensor  # (N,) start of each example in flat
    lengths: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,) class ids
    truncated: int = 0
    skipped: int = 0  # texts left out for having no token

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def batch(self, index: torch.Tensor) -> Batch:
        """The examples at ``index``, right-padded with <pad> = 0."""
        lengths = self.lengths[index]  # (B,)
        steps = torch.arange(int(lengths.max()))  # (T,)
        mask = steps[None, :] < lengths[:, None]  # (B, T)
        positions = (self.offsets[index][:, None] + steps[None, :]).clamp(max=self.flat.numel() - 1)
        tokens = torch.where(mask, self.flat[positions], PAD_ID)  # (B, T)
        return Batch(tokens, lengths, self.labels[index])


def encode(
    tokenized: Tokenized, labels: Sequence[str], interner: Interner, vocab: Vocab,
    names: Sequence[str],
) -> EncodedSet:
    """Map provisional ids to vocabulary ids (unknown -> <unk>) and labels to class ids.

    ``labels`` has one entry per tokenized text, including those left out for having no token.
    """
    lookup = np.array([vocab.id(t) for t in interner.tokens()], dtype=np.int64)
    lookup = lookup if lookup.size else np.zeros(1, dtype=np.int64)
    lengths = np.array([row.size for row in tokenized.ids], dtype=np.int64)
    flat = np.concatenate(tokenized.ids) if tokenized.ids else np.array([], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths.size else lengths
    class_of = {name: i for i, name in enumerate(names)}
    return EncodedSet(
        flat=torch.from_numpy(lookup[flat]),
        offsets=torch.from_numpy(offsets.astype(np.int64)),
        lengths=torch.from_numpy(lengths),
        labels=torch.tensor([class_of[label] for label in tokenized.keep(labels)],
                            dtype=torch.int64),
        truncated=tokenized.truncated,
        skipped=len(tokenized.skipped),
    )


def encode_texts(
    texts: Sequence[str], vocab: Vocab, max_length: int
) -> tuple[list[list[int]], int]:
    """Ids of each text (truncated to ``max_length``) with a saved vocabulary, and how many were
    truncated; for inference, where no training data is at hand."""
    encoded, truncated = [], 0
    for text in texts:
        tokens = tokenize(text)
        truncated += len(tokens) > max_length
        encoded.append(vocab.encode(tokens[:max_length]))
    return encoded, truncated


# --- batching --------------------------------------------------------------------------------


def bucket_batches(
    lengths: torch.Tensor | np.ndarray, batch_size: int, seed: int, epoch: int, *,
    chunk_batches: int = 50,
) -> list[np.ndarray]:
    """One epoch's batches of example indices, each batch of similar lengths.

    The examples are shuffled, cut into chunks of ``chunk_batches`` batches, sorted by length
    within each chunk (little padding, yet batches still differ from epoch to epoch), batched,
    and the batches shuffled. A pure function of (seed, epoch); every example appears once.
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed % 2**63, epoch])
    order = rng.permutation(lengths.size)
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, order.size, chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, part.size, batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: torch.Tensor | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed evaluation batches: all examples by length (longest first), no shuffling."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
