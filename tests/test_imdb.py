"""IMDB: converting the aclImdb archive to the shared JSONL layout, downloading it once."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from rnnlab.checkpoint import atomic_write_text
from rnnlab.classify import imdb
from rnnlab.classify.data import read_examples
from rnnlab.classify.imdb import convert_aclimdb, imdb_files
from rnnlab.data.corpora import get_corpus
from rnnlab.data.download import sha256_of
from rnnlab.errors import RnnlabError


def _fake_aclimdb(path: Path) -> Path:
    """A tiny aclImdb_v1.tar.gz with the real archive's layout."""
    files = {
        "aclImdb/README": "readme",
        "aclImdb/imdb.vocab": "the\nmovie\n",
        "aclImdb/train/pos/1_9.txt": "Loved it.<br /><br />Caf\u00e9 scene!",
        "aclImdb/train/neg/1_2.txt": "Hated it.",
        "aclImdb/train/pos/0_7.txt": "Fine film.",
        "aclImdb/train/neg/10_1.txt": "Awful.",
        "aclImdb/train/unsup/3_0.txt": "No label here.",
        "aclImdb/train/unsup/0_0.txt": "Nor here.",
        "aclImdb/train/labeledBow.feat": "0 0:1",
        "aclImdb/test/pos/0_10.txt": "Superb.",
        "aclImdb/test/neg/0_4.txt": "Meh.",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_convert_aclimdb_layout(tmp_path):
    paths = convert_aclimdb(_fake_aclimdb(tmp_path / "a.tar.gz"), tmp_path / "imdb")
    assert set(paths) == {"train", "test", "unsup"}
    train = _records(paths["train"])
    assert [r["id"] for r in train] == ["train/pos/0_7", "train/neg/1_2", "train/pos/1_9",
                                        "train/neg/10_1"]  # by review id, neg before pos
    assert train[2] == {"text": "Loved it.<br /><br />Caf\u00e9 scene!", "label": 1, "rating": 9,
                        "id": "train/pos/1_9"}
    assert list(train[0]) == ["text", "label", "rating", "id"]
    assert [(r["label"], r["rating"]) for r in _records(paths["test"])] == [(0, 4), (1, 10)]
    assert _records(paths["unsup"]) == [{"text": "Nor here.", "id": "train/unsup/0_0"},
                                        {"text": "No label here.", "id": "train/unsup/3_0"}]
    assert not list((tmp_path / "imdb").glob(".*"))  # no temporary files left
    ex = read_examples(paths["train"], rename=imdb.IMDB_LABELS)
    assert ex.labels == ["pos", "neg", "pos", "neg"]


def test_converted_files_get_the_usual_mode_and_reach_the_disk(tmp_path, monkeypatch):
    # A shared data folder needs files readable like any other file the user creates (umask),
    # and a crash right after the conversion must not leave empty or torn files behind.
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    archive = _fake_aclimdb(tmp_path / "a.tar.gz")
    old_umask = os.umask(0o022)
    try:
        paths = convert_aclimdb(archive, tmp_path / "imdb")
        atomic_write_text(tmp_path / "reference.json", "{}")
    finally:
        os.umask(old_umask)
    reference = (tmp_path / "reference.json").stat().st_mode & 0o777
    assert reference == 0o644
    assert {split: p.stat().st_mode & 0o777 for split, p in paths.items()} == {
        "train": 0o644, "test": 0o644, "unsup": 0o644}
    names = [os.path.basename(p) for p in synced]
    for split in ("train", "test", "unsup"):
        assert any(n.startswith(f".{split}.jsonl.gz.") for n in names), names
    assert str(tmp_path / "imdb") in synced  # the renames themselves are made durable


def test_interrupted_conversion_leaves_no_file(tmp_path, monkeypatch):
    real_dumps, calls = json.dumps, [0]

    def dumps(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr(imdb.json, "dumps", dumps)
    with pytest.raises(OSError):
        convert_aclimdb(_fake_aclimdb(tmp_path / "a.tar.gz"), tmp_path / "imdb")
    assert list((tmp_path / "imdb").iterdir()) == []


def test_convert_rejects_a_broken_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8bnot really")
    with pytest.raises(RnnlabError, match="not a readable IMDB archive"):
        convert_aclimdb(bad, tmp_path / "imdb")


def test_imdb_is_registered_with_the_shared_layout():
    corpus = get_corpus("imdb")
    assert corpus.task == "classify"
    assert {f.path for f in corpus.files} == {
        "imdb/train.jsonl.gz", "imdb/test.jsonl.gz", "imdb/unsup.jsonl.gz"}


def test_imdb_files_downloads_converts_once_and_deletes_the_archive(tmp_path, monkeypatch):
    fake = _fake_aclimdb(tmp_path / "fake.tar.gz")
    calls = []

    def fake_download(url, dest, sha256):
        calls.append((url, sha256))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fake, dest)
        return Path(dest)

    monkeypatch.setattr(imdb, "download", fake_download)
    root = tmp_path / "data"
    paths = imdb_files(root)
    assert calls == [(imdb.IMDB_URL, imdb.IMDB_SHA256)]
    assert paths["train"] == root / "imdb" / "train.jsonl.gz" and paths["test"].exists()
    assert not (root / "imdb" / "aclImdb_v1.tar.gz").exists()
    imdb_files(root)
    assert len(calls) == 1  # present files are not fetched again


def test_imdb_archive_placed_by_hand_is_checked_and_used(tmp_path, monkeypatch):
    folder = tmp_path / "imdb"
    folder.mkdir()
    archive = _fake_aclimdb(folder / imdb.IMDB_ARCHIVE)
    monkeypatch.setattr(imdb, "download", None)  # must not be called
    with pytest.raises(RnnlabError, match="does not match the expected sha256"):
        imdb_files(tmp_path)
    monkeypatch.setattr(imdb, "IMDB_SHA256", sha256_of(archive))
    assert len(_records(imdb_files(tmp_path)["test"])) == 2
    assert not archive.exists()


def test_imdb_files_missing_without_download(tmp_path):
    with pytest.raises(RnnlabError, match="missing"):
        imdb_files(tmp_path, download_missing=False)
