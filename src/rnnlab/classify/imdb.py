"""The IMDB movie-review corpus (Maas et al., 2011): download, conversion to JSONL, loading.

The archive ``aclImdb_v1.tar.gz`` is converted once into ``imdb/{train,test,unsup}.jsonl.gz``
under the data directory (the files that ``rnnlab.data.corpora`` declares) and then deleted.
IMDB's 0/1 labels are named ``neg``/``pos``.
"""

from __future__ import annotations

import gzip
import json
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from rnnlab.atomic import atomic_open
from rnnlab.classify.data import Examples, read_examples, record_field, records
from rnnlab.data.corpora import IMDB_URL, corpus_files, data_dir
from rnnlab.data.download import download, sha256_of
from rnnlab.data.text import classifier_tokens
from rnnlab.errors import RnnlabError

IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_LABELS = {"0": "neg", "1": "pos"}  # label 1 = positive review (rating >= 7)
IMDB_SPLITS = ("train", "test", "unsup")
_IMDB_MEMBER = re.compile(r"(?:\./)?aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt")


def imdb_review_text(root: str | Path | None = None) -> str:
    """IMDB's unlabelled and training reviews, one per line, tokenised as the classifier
    tokenises them, so that a language model trained on it shares the classifier's words.
    The test reviews are left out: a model pretrained on them would have read the test set."""
    files = imdb_files(root)
    lines = [
        " ".join(classifier_tokens(str(record_field(record, "text", "text", files[split], line))))
        for split in ("unsup", "train") for line, record in records(files[split])
    ]
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
