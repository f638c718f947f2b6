"""Classification data: tokenizer, readers and their errors, IMDB conversion, vocab, batching."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.checkpoint import atomic_write_text
from rnnlab.classify import imdb
from rnnlab.classify.data import (
    Examples,
    check_labels,
    label_names,
    read_examples,
    split_examples,
    split_validation,
)
from rnnlab.classify.encoding import Interner, build_vocab, encode_set
from rnnlab.classify.imdb import convert_aclimdb, imdb_files
from rnnlab.data.batching import bucket_batches
from rnnlab.data.corpora import get_corpus
from rnnlab.data.download import sha256_of
from rnnlab.data.text import classifier_tokens
from rnnlab.errors import RnnlabError

# --- tokenizer -------------------------------------------------------------------------------


def test_tokenize_lowercases_splits_punctuation_and_drops_html_breaks():
    text = "Great movie!<br /><br />I DON'T like it.<br/>Rock'n'roll,<BR>10/10 (really)"
    assert classifier_tokens(text) == [
        "great", "movie", "!", "i", "don't", "like", "it", ".", "rock'n'roll", ",",
        "10", "/", "10", "(", "really", ")",
    ]


def test_tokenize_apostrophes_outside_words_and_curly_quotes():
    assert classifier_tokens("'quoted' it\u2019s") == ["'", "quoted", "'", "it's"]
    assert classifier_tokens("Wow!!") == ["wow", "!", "!"]
    assert classifier_tokens("   ") == []


# --- readers ---------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_csv_with_quoted_multiline_text(tmp_path):
    path = _write(tmp_path / "d.csv", 'id,review,sentiment\n1,"Good, very\ngood",pos\n2,Bad,neg\n')
    ex = read_examples(path, text_field="review", label_field="sentiment")
    assert ex.texts == ["Good, very\ngood", "Bad"]
    assert ex.labels == ["pos", "neg"]
    assert ex.lines == [3, 4]


def test_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("text,label\nhi,a\n".encode("utf-8-sig"))
    assert read_examples(path).texts == ["hi"]
    path = tmp_path / "bom.jsonl"
    path.write_bytes('{"text": "hi", "label": 1}\n'.encode("utf-8-sig"))
    assert read_examples(path).labels == ["1"]


def test_read_tsv_is_unquoted(tmp_path):
    path = _write(tmp_path / "d.tsv", 'text\tlabel\n"quoted" start\t1\nplain\t0\n')
    ex = read_examples(path)
    assert ex.texts == ['"quoted" start', "plain"]
    assert ex.labels == ["1", "0"]


def test_read_jsonl_int_labels_and_blank_lines(tmp_path):
    rows = [{"text": "a", "label": 2}, {"text": "b", "label": 10}, {"text": "c", "label": 1}]
    path = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ex = read_examples(path)
    assert ex.labels == ["2", "10", "1"]
    assert label_names(ex.labels) == ["1", "2", "10"]  # numeric order, 3 classes


def test_read_jsonl_gz_and_rename(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write('{"text": "x", "label": 0}\n{"text": "y", "label": 1}\n')
    ex = read_examples(path, rename={"0": "neg", "1": "pos"})
    assert ex.labels == ["neg", "pos"]


def test_string_labels_sort_alphabetically():
    assert label_names(["sports", "arts", "world", "arts"]) == ["arts", "sports", "world"]


@pytest.mark.parametrize("name, content, message", [
    ("a.csv", "body,label\nhello,1\n", "line 2: no text field 'text'"),
    ("a.csv", "text,label\nhello,1\nbye\n", "line 3: the label field 'label' has no value"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "line 2: no label field 'label'"),
    ("a.jsonl", '{"text": "  ", "label": 1}\n', "line 1: the text is empty"),
    ("a.jsonl", '{"text": "a", "label": 1.5}\n', "line 1: the label must be"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{oops\n', "line 2 is not valid JSON"),
    ("a.jsonl", "", "contains no examples"),
    ("a.csv", "text,label\n", "contains no examples"),
    ("a.txt", "x", "cannot tell the format"),
])
def test_reader_errors_name_the_problem(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(RnnlabError, match=message) as info:
        read_examples(path)
    assert name in str(info.value)


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"text,label\nfine,1\ncaf\xe9,0\n")
    with pytest.raises(RnnlabError, match=r"a.csv, line 3 is not valid UTF-8"):
        read_examples(path)


@pytest.mark.parametrize("payload", [b"not gzip at all", gzip.compress(b'{"text": "a"}\n')[:15]])
def test_unreadable_gzip(tmp_path, payload):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(payload)
    with pytest.raises(RnnlabError, match="not a readable gzip file"):
        read_examples(path)


def test_missing_file(tmp_path):
    with pytest.raises(RnnlabError, match="file not found"):
        read_examples(tmp_path / "nope.csv")


def test_one_class_and_unknown_labels_are_errors():
    train = Examples(["a", "b"], ["pos", "pos"], [2, 3], "train.csv")
    with pytest.raises(RnnlabError, match="only one class \\('pos'\\)"):
        check_labels(train, label_names(train.labels), [])
    train = Examples(["a", "b"], ["pos", "neg"], [2, 3], "train.csv")
    test = Examples(["c"], ["meh"], [7], "test.csv")
    with pytest.raises(RnnlabError, match="test.csv, line 7: label 'meh' is not one of"):
        check_labels(train, ["neg", "pos"], [test])
    with pytest.raises(RnnlabError, match="train.csv, line 3: label 'neg' is not one of"):
        check_labels(train, ["pos", "other"], [])  # labels saved by an earlier run


# --- IMDB ------------------------------------------------------------------------------------


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


# --- splits, vocab, encoding -----------------------------------------------------------------


def test_split_validation_is_seeded_stratified_and_disjoint():
    labels = ["a"] * 80 + ["b"] * 20
    train, valid = split_validation(labels, 0.2, seed=3)
    assert len(valid) == 20 and len(train) == 80
    assert sorted([*train, *valid]) == list(range(100))
    assert sum(labels[i] == "b" for i in valid) == 4  # class proportions kept
    again, _ = split_validation(labels, 0.2, seed=3)
    other, _ = split_validation(labels, 0.2, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_split_examples_three_ways():
    ex = Examples([f"t{i}" for i in range(100)], ["x", "y"] * 50, list(range(100)), "f.csv")
    train, valid, test = split_examples(ex, [0.8, 0.1, 0.1], seed=1)
    assert (len(train), len(valid), len(test)) == (80, 10, 10)
    assert not set(train.texts) & set(test.texts) and not set(valid.texts) & set(test.texts)


def test_vocab_has_pad_zero_and_counts_training_tokens_only():
    interner = Interner()
    train = interner.tokenize(["b a b c", "b a d"], max_length=10)
    valid = interner.tokenize(["zzz zzz zzz b"], max_length=10)
    vocab = build_vocab(interner, train.ids, min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "b", "a"]
    assert "zzz" not in vocab
    assert build_vocab(interner, train.ids, max_size=3).itos == ["<pad>", "<unk>", "b"]
    assert build_vocab(interner, train.ids).itos[2:] == ["b", "a", "c", "d"]  # ties: first seen
    encoded = encode_set(valid, ["y"], interner, vocab, ["x", "y"])
    assert encoded.flat.tolist() == [1, 1, 1, 2] and encoded.labels.tolist() == [1]


def test_truncation_is_counted_not_rejected():
    tokenized = Interner().tokenize(["one two three four", "one", "a b c"], max_length=3)
    assert [row.size for row in tokenized.ids] == [3, 1, 3]
    assert tokenized.truncated == 1


def _encoded(lengths: list[int]):
    interner = Interner()
    texts = [" ".join(f"w{i % 7}" for i in range(n)) for n in lengths]
    tokenized = interner.tokenize(texts, max_length=1000)
    vocab = build_vocab(interner, tokenized.ids)
    labels = ["x" if i % 2 else "y" for i in range(len(lengths))]
    return encode_set(tokenized, labels, interner, vocab, ["x", "y"])


def test_batch_pads_with_zero():
    data = _encoded([3, 1, 5])
    batch = data.batch(torch.tensor([2, 1]))
    assert batch.tokens.shape == (2, 5)
    assert batch.lengths.tolist() == [5, 1]
    assert batch.tokens[1, 1:].tolist() == [0, 0, 0, 0] and (batch.tokens[0] > 0).all()
    assert batch.labels.tolist() == [1, 0]
    assert batch.tokens[0, :3].tolist() == data.batch(torch.tensor([0])).tokens[0].tolist()


def test_bucket_batches_cover_every_example_once_and_are_seeded():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=1003)
    batches = bucket_batches(lengths, 16, seed=5, epoch=2, chunk_batches=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))
    assert len(batches) == -(-1003 // 16)
    again = bucket_batches(lengths, 16, seed=5, epoch=2, chunk_batches=8)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = bucket_batches(lengths, 16, seed=5, epoch=3, chunk_batches=8)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=False))
    # similar lengths: far less padding than random batches
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(rng.permutation(1003), len(batches))
    assert padded < 0.75 * sum(len(b) * lengths[b].max() for b in random_batches)
