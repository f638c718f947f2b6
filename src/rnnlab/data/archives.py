"""Corpora shipped as one zip archive: download, check, extract (and cut), all or nothing.

The archive is downloaded into a temporary folder beside the corpus's files, checked (sha256,
published size), and its members streamed out (hashed where a hash is published); the split
files are renamed into place only when every one of them is complete, and the temporary folder
(archive included) is removed whatever happens, so a bad or truncated download leaves nothing.

enwik8 and text8 are one file of 10^8 bytes each, cut as is standard (e.g. Transformer-XL,
Dai et al., 2019): the last 10M bytes are valid (5M) then test (5M), the rest train. enwik8 is
a byte-level benchmark, so each byte is written as the character of the same number (Latin-1
to UTF-8): rnnlab's character level then reads exactly one token per byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rnnlab.data.download import download
from rnnlab.errors import RnnlabError

BLOCK = 1 << 20


@dataclass(frozen=True)
class Archive:
    url: str
    folder: str  # the corpus's folder under the data directory
    sha256: str | None  # of the archive, where published
    size: int | None  # of the archive in bytes, where published
    members: dict[str, str]  # split -> member; {"all": member} for one file cut by bytes
    member_sha1: dict[str, str] = field(default_factory=dict)  # published member hashes
    member_size: int | None = None  # of the one member cut by bytes
    held_out: int = 5_000_000  # bytes of valid, then of test, cut from the end of that member
    latin1: bool = False  # write each byte as one character (a byte-level corpus)


# The WikiText site's own mirror (the original research.metamind.io bucket now refuses).
# Archive sha256 as registered by Julia's MLDatasets (its WikiText-103 DataDep, for the same
# file at the original bucket); member sha1 from GluonNLP (gluonnlp/data/language_model.py).
WIKITEXT103 = Archive(
    "https://wikitext.smerity.com/wikitext-103-v1.zip", "wikitext-103",
    "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590", None,
    {"train": "wikitext-103/wiki.train.tokens", "valid": "wikitext-103/wiki.valid.tokens",
     "test": "wikitext-103/wiki.test.tokens"},
    member_sha1={"wikitext-103/wiki.train.tokens": "b7497e2dfe77e72cfef5e3dbc61b7b53712ac211",
                 "wikitext-103/wiki.valid.tokens": "c326ac59dc587676d58c422eb8a03e119582f92b",
                 "wikitext-103/wiki.test.tokens": "8a5befc548865cec54ed4273cf87dbbad60d1e47"})
# Matt Mahoney's pages (http://mattmahoney.net/dc/textdata.html) publish no hash: the archive
# sizes are those recorded by the Hugging Face enwik8 dataset card and TensorFlow's word2vec
# tutorial; each member is 10^8 bytes by definition, and zip's CRC-32 checks its content.
ENWIK8 = Archive("http://mattmahoney.net/dc/enwik8.zip", "enwik8", None, 36_445_475,
                 {"all": "enwik8"}, member_size=100_000_000, latin1=True)
TEXT8 = Archive("http://mattmahoney.net/dc/text8.zip", "text8", None, 31_344_016,
                {"all": "text8"}, member_size=100_000_000)
ARCHIVES = {"wikitext-103": WIKITEXT103, "enwik8": ENWIK8, "text8": TEXT8}


def split_files(name: str) -> dict[str, str]:
    """Split -> path under the data directory of an archive corpus's extracted files."""
    return {split: f"{ARCHIVES[name].folder}/{split}.txt" for split in ("train", "valid", "test")}


def prepare_wikitext103(base: Path) -> None:
    prepare_archive(base, ARCHIVES["wikitext-103"])


def prepare_enwik8(base: Path) -> None:
    prepare_archive(base, ARCHIVES["enwik8"])


def prepare_text8(base: Path) -> None:
    prepare_archive(base, ARCHIVES["text8"])


def prepare_archive(base: str | Path, archive: Archive) -> dict[str, Path]:
    """Download ``archive`` and write its ``train/valid/test.txt`` under ``base``."""
    folder = Path(base) / archive.folder
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        local = download(archive.url, work / Path(archive.url).name, archive.sha256)
        if archive.size is not None and local.stat().st_size != archive.size:
            raise RnnlabError(
                f"{archive.url} gave {local.stat().st_size} bytes, not the published "
                f"{archive.size} (a truncated or changed download); nothing was saved")
        try:
            with zipfile.ZipFile(local) as zipped:
                written = _extract(zipped, archive, work)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise RnnlabError(f"{archive.url} is not a readable zip archive ({exc}); "
                              "nothing was saved") from None
        final = {}
        for split, path in written.items():
            final[split] = folder / f"{split}.txt"
            os.replace(path, final[split])
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract(zipped: zipfile.ZipFile, archive: Archive, work: Path) -> dict[str, Path]:
    names = set(zipped.namelist())
    for member in archive.members.values():
        if member not in names:
            raise RnnlabError(f"{archive.url} has no {member!r} (it holds "
                              f"{', '.join(sorted(names)[:5]) or 'nothing'})")
    if "all" not in archive.members:
        written = {}
        for split, member in archive.members.items():
            written[split] = work / f"{split}.txt"
            with zipped.open(member) as source, open(written[split], "wb") as out:
                digest = _copy(source, out, None, archive.latin1)
            expected = archive.member_sha1.get(member)
            if expected is not None and digest != expected:
                raise RnnlabError(f"{member} in {archive.url} has sha1 {digest}, expected "
                                  f"{expected}; nothing was saved")
        return written
    member = archive.members["all"]
    size = zipped.getinfo(member).file_size
    if archive.member_size is not None and size != archive.member_size:
        raise RnnlabError(f"{member} in {archive.url} has {size} bytes, expected "
                          f"{archive.member_size}; nothing was saved")
    if size <= 2 * archive.held_out:
        raise RnnlabError(f"{member} in {archive.url} is too short to hold out "
                          f"2 x {archive.held_out} bytes")
    lengths = {"train": size - 2 * archive.held_out, "valid": archive.held_out,
               "test": archive.held_out}
    written = {split: work / f"{split}.txt" for split in lengths}
    with zipped.open(member) as source:
        for split, length in lengths.items():
            with open(written[split], "wb") as out:
                _copy(source, out, length, archive.latin1)
    return written


def _copy(source: BinaryIO, out: BinaryIO, length: int | None, latin1: bool) -> str:
    """Copy ``length`` bytes (all: None) from ``source``; the sha1 of the bytes read."""
    digest = hashlib.sha1(usedforsecurity=False)
    left = length
    while left is None or left > 0:
        block = source.read(BLOCK if left is None else min(BLOCK, left))
        if not block:
            if left:
                raise RnnlabError("the archive member ended early")
            break
        digest.update(block)
        out.write(block.decode("latin-1").encode("utf-8") if latin1 else block)
        if left is not None:
            left -= len(block)
    return digest.hexdigest()
