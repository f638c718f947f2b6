"""Labelled text for classification: reading CSV/TSV/JSONL files, checking labels, splits.

Records are (text, label) pairs. Labels are kept as strings (JSON integers become their decimal
text) and their names sorted deterministically (numerically when every name is an integer, else
alphabetically); a label's index in that list is its class id.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rnnlab.data.splits import carve
from rnnlab.data.text import read_text, utf8_lines
from rnnlab.errors import RnnlabError

FORMATS = (".csv", ".tsv", ".jsonl", ".ndjson")  # each optionally followed by .gz


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
    ``rename`` maps label names, e.g. ``{"0": "neg", "1": "pos"}``. A folder is read with
    :func:`read_label_folder`.
    """
    path = Path(path)
    if path.is_dir():
        return read_label_folder(path)
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    for line, record in records(path):
        text = record_field(record, text_field, "text", path, line)
        label = _label(record_field(record, label_field, "label", path, line), path, line)
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


def read_label_folder(folder: str | Path, skipped: list[int] | None = None) -> Examples:
    """``FOLDER/<label>.txt`` files (e.g. ``names/Russian.txt``), one example per non-empty
    line, labelled by the file's name; ``skipped[0]`` counts the empty lines left out."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt")
    if not files:
        raise RnnlabError(f"{folder} has no <label>.txt files")
    texts, labels, lines = [], [], []
    for path in files:
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            if line.strip():
                texts.append(line.strip())
                labels.append(path.stem)
                lines.append(number)
            elif skipped is not None:
                skipped[0] += 1
    return Examples(texts, labels, lines, str(folder))


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
            yield from reader(utf8_lines(handle, path), path, fmt)
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


def record_field(record: dict, name: str, role: str, path: Path, line: int) -> object:
    """The value of field ``name`` (the record's ``role``: text or label); a missing or null
    field is an error naming the file, the line and the fields there are."""
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


# --- splits --------------------------------------------------------------------------------


def split_examples(
    examples: Examples, fractions: Sequence[float], seed: int
) -> list[Examples | None]:
    """Cut labelled examples into train/valid[/test] by ``fractions`` (see :func:`carve`)."""
    return [None if index is None else examples.subset(index)
            for index in carve(fractions, labels=examples.labels, seed=seed)]


def read_predict_file(path: str) -> list[str]:
    """Texts to classify: one per non-empty line, or JSON lines with a "text" field (a .jsonl
    or .ndjson file)."""
    lines = [line for line in read_text(path).splitlines() if line.strip()]
    if not path.endswith((".jsonl", ".ndjson")):
        return lines
    texts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise RnnlabError(f"{path}:{number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise RnnlabError(f"{path}:{number} has no \"text\" field")
        texts.append(record["text"])
    return texts
