"""Classification data: tokenizer, readers and their errors, splits, vocab, batching."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.classify.data import (
    Examples,
    check_labels,
    label_names,
    read_examples,
    split_examples,
)
from rnnlab.classify.encoding import Interner, build_vocab, encode_set
from rnnlab.data.batching import bucket_batches
from rnnlab.data.splits import split_validation
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
