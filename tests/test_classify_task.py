"""ClassificationTask: building from files, the Task contract, metrics, artifacts, prediction."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab import cli
from rnnlab.checkpoint import load_artifacts, save_artifacts
from rnnlab.classify.inference import predict_texts
from rnnlab.classify.metrics import classification_report
from rnnlab.classify.task import ClassificationTask, build_classification_task
from rnnlab.config import POOLINGS, DataConfig
from rnnlab.config_resolve import resolve_config
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import load_lm_data
from rnnlab.training.task import Task

CPU = torch.device("cpu")
_FILLER = "the a movie film plot actor scene story it was and of to this".split()
_CUES = {"pos": ["great", "wonderful", "loved"], "neg": ["awful", "boring", "hated"],
         "mixed": ["okay", "average", "fine"]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def write_reviews(path: Path, n: int, seed: int, labels=("neg", "pos", "mixed")) -> Path:
    """A CSV of toy reviews whose label is given away by one cue word among fillers."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "sentiment"])
        for i in range(n):
            label = labels[i % len(labels)]
            words = [rng.choice(_FILLER) for _ in range(rng.randint(3, 30))]
            cue = rng.choice(_CUES.get(label, _CUES["mixed"]))
            words.insert(rng.randrange(len(words) + 1), cue)
            writer.writerow([i, " ".join(words).capitalize() + "!", label])
    return path


def _config(tmp_path: Path, **extra):
    overrides = {
        "task": "classify", "data.text_field": "review", "data.label_field": "sentiment",
        "model.embedding_dim": 16, "model.hidden_size": 16, "model.dropout": 0.0,
        "data.batch_size": 16, "data.eval_batch_size": 32, "data.min_freq": 1,
        "train.seed": 11, "train.device": "cpu", **extra,
    }
    return resolve_config(preset="imdb-bilstm", overrides=overrides)


@pytest.fixture
def task(tmp_path) -> ClassificationTask:
    train = write_reviews(tmp_path / "train.csv", 300, seed=1)
    test = write_reviews(tmp_path / "test.csv", 90, seed=2)
    return build_classification_task(
        _config(tmp_path, **{"data.train_path": str(train), "data.test_path": str(test)}), CPU)


def test_build_from_files(task):
    assert task.label_names == ["mixed", "neg", "pos"]
    assert task.vocab.itos[:2] == ["<pad>", "<unk>"]
    assert {s: len(e) for s, e in task.sets.items()} == {"train": 270, "valid": 30, "test": 90}
    assert task.stats["class_counts"]["valid"] == [10, 10, 10]  # stratified
    assert task.steps_per_epoch() == 17
    assert (task.best_metric, task.higher_is_better, task.unit) == ("accuracy", True, "examples")


def test_batches_are_pure_in_seed_and_epoch(task):
    first = list(task.batches(1))
    assert len(first) == task.steps_per_epoch()
    assert sum(len(b) for b in first) == 270
    again = list(task.batches(1, start=5))
    assert all(torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
               for a, b in zip(first[5:], again, strict=True))
    assert not torch.equal(next(task.batches(2)).labels, first[0].labels)


@pytest.mark.slow
def test_training_steps_learn(task):
    before = task.evaluate("valid")
    assert set(before) == {"loss", "accuracy"}
    optimizer = torch.optim.Adam(task.model.parameters(), lr=1e-2)
    task.model.train()
    for epoch in range(8):
        for batch in task.batches(epoch):
            loss, count = task.train_loss(batch)
            assert loss.dim() == 0 and count == len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert task.model.training  # evaluation restores the mode it found
    after = task.evaluate("test")
    assert after["accuracy"] > 0.9 and after["loss"] < before["loss"]
    report = task.report("test")
    assert report["examples"] == 90 and sum(map(sum, report["confusion"])) == 90
    assert report["labels"] == task.label_names


def test_missing_split_and_resume_mismatch(task):
    task.sets.pop("test")
    with pytest.raises(RnnlabError, match="no test set"):
        task.evaluate("test")
    task.load_state_dict(task.state_dict())
    with pytest.raises(RnnlabError, match="same data"):
        task.load_state_dict({"train_examples": 5})


def test_classification_report_by_hand():
    # true:  a a a b b c ; predicted: a b a b c c
    report = classification_report([0, 1, 0, 1, 2, 2], [0, 0, 0, 1, 1, 2], ["a", "b", "c"])
    assert report["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert a["f1"] == pytest.approx(0.8)
    assert (b["precision"], b["recall"], b["f1"]) == (0.5, 0.5, 0.5)
    assert (c["precision"], c["recall"]) == (0.5, 1.0) and c["f1"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_report_class_never_predicted_scores_zero():
    report = classification_report([0, 0], [0, 1], ["x", "y"])
    assert report["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_predict_texts_keeps_order_and_validates(task):
    texts = ["A great film", "the plot " * 200 + "awful", "fine"]
    out = predict_texts(task.model, task.vocab, task.label_names, texts, max_length=50,
                        batch_size=2)
    assert len(out) == 3
    for result in out:
        assert set(result["probs"]) == {"mixed", "neg", "pos"}
        assert sum(result["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["label"] == max(result["probs"], key=result["probs"].get)
    single = predict_texts(task.model, task.vocab, task.label_names, texts[2:], 50)
    assert single[0]["probs"] == pytest.approx(out[2]["probs"], abs=1e-6)
    with pytest.raises(RnnlabError, match="no texts"):
        predict_texts(task.model, task.vocab, task.label_names, [], 50)
    with pytest.raises(RnnlabError, match="text 2 of 2 is empty"):
        predict_texts(task.model, task.vocab, task.label_names, ["ok", "  "], 50)


def append_reviews(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Add (review, sentiment) rows to a CSV made by :func:`write_reviews`."""
    with open(path, "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([1000 + i, text, label] for i, (text, label) in
                                     enumerate(rows))
    return path


@pytest.mark.parametrize("pooling", POOLINGS)
def test_texts_without_tokens_are_skipped_and_counted(tmp_path, pooling):
    # "<br />" is all markup: a row of zero tokens would make mean pooling divide by zero,
    # last pooling read index -1, and packing fail.
    train = append_reviews(write_reviews(tmp_path / "train.csv", 60, seed=1),
                           [("<br />", "pos"), ("<br/><BR>", "neg"), ("<br /> <br />", "mixed")])
    test = append_reviews(write_reviews(tmp_path / "test.csv", 12, seed=2), [("<br />", "neg")])
    config = _config(tmp_path, **{"data.train_path": str(train), "data.test_path": str(test),
                                  "model.pooling": pooling})
    with pytest.warns(UserWarning) as caught:
        task = build_classification_task(config, CPU)
    skipped = task.stats["skipped_empty"]
    assert skipped["train"] + skipped["valid"] == 3 and skipped["test"] == 1
    assert len(task.sets["train"]) + len(task.sets["valid"]) == 60 and len(task.sets["test"]) == 12
    assert all(int(data.lengths.min()) >= 1 for data in task.sets.values())
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("skipped 1 test text of 13 with no tokens") for m in messages)
    assert sum("no tokens" in m for m in messages) == sum(1 for n in skipped.values() if n)
    for split in ("valid", "test"):
        result = task.evaluate(split)
        assert torch.isfinite(torch.tensor([result["loss"], result["accuracy"]])).all()
    for batch in task.batches(0):
        loss, _ = task.train_loss(batch)
        assert torch.isfinite(loss)


def test_a_split_left_without_texts_is_a_clear_error(tmp_path):
    train = write_reviews(tmp_path / "train.csv", 30, seed=1)
    test = append_reviews(write_reviews(tmp_path / "test.csv", 0, seed=2),
                          [("<br />", "neg"), ("<br>", "pos")])
    config = _config(tmp_path, **{"data.train_path": str(train), "data.test_path": str(test)})
    with pytest.raises(RnnlabError, match="no test text has a token"):
        build_classification_task(config, CPU)


NO_TOKENS = {"label": None, "probs": None, "error": "the text has no tokens"}


@pytest.mark.parametrize("pooling", POOLINGS)
def test_predict_answers_texts_without_tokens_one_by_one(tmp_path, pooling):
    train = write_reviews(tmp_path / "train.csv", 60, seed=1)
    task = build_classification_task(
        _config(tmp_path, **{"data.train_path": str(train), "model.pooling": pooling}), CPU)
    texts = ["<br />", "A great film", "<BR/><br>", "!!!"]
    out = predict_texts(task.model, task.vocab, task.label_names, texts, 50, batch_size=2)
    assert [out[0], out[2]] == [NO_TOKENS] * 2
    for result in (out[1], out[3]):  # punctuation is made of tokens
        assert result["label"] in task.label_names and "error" not in result
        assert sum(result["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    alone = predict_texts(task.model, task.vocab, task.label_names, ["A great film"], 50)
    assert alone[0]["probs"] == pytest.approx(out[1]["probs"], abs=1e-6)
    assert predict_texts(task.model, task.vocab, task.label_names, ["<br>"], 50) == [NO_TOKENS]


def test_predict_command_prints_texts_without_tokens_as_unlabelled(tmp_path, capsys):
    train = write_reviews(tmp_path / "train.csv", 60, seed=1)
    config = _config(tmp_path, **{"data.train_path": str(train), "train.max_steps": 1})
    rnnlab.train(config, tmp_path / "run")
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "run"), "<br />", "loved it"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"text": "<br />", **NO_TOKENS}
    assert lines[1]["text"] == "loved it" and lines[1]["label"] in ("mixed", "neg", "pos")
    assert set(lines[1]["probs"]) == {"mixed", "neg", "pos"}
    clf = rnnlab.TextClassifier.load(tmp_path / "run")
    assert clf.predict(["<br/>"]) == [NO_TOKENS]


def test_classification_task_has_every_method_of_the_task_protocol(task):
    wanted = [name for name, value in vars(Task).items()
              if callable(value) and not name.startswith("_")]
    assert [name for name in wanted if not callable(getattr(task, name, None))] == []
    assert task.shard(0, 2) is False  # whole examples: the Trainer slices each batch


def test_artifacts_round_trip(task, tmp_path):
    save_artifacts(tmp_path, task.vocab, task.label_names)
    vocab, labels = load_artifacts(tmp_path)
    assert vocab.itos == task.vocab.itos and labels == task.label_names
    assert json.loads((tmp_path / "vocab.json").read_text())["labels"] == labels


def test_saved_vocab_and_labels_are_reused(task, tmp_path):
    config = _config(tmp_path, **{"data.train_path": str(write_reviews(tmp_path / "t.csv", 60, 5))})
    rebuilt = build_classification_task(config, CPU, vocab=task.vocab,
                                        label_names=task.label_names)
    assert rebuilt.vocab is task.vocab and rebuilt.label_names == task.label_names
    assert rebuilt.model.embedding.num_embeddings == len(task.vocab)
    only_valid = build_classification_task(config, CPU, vocab=task.vocab,
                                           label_names=task.label_names, splits=["valid"])
    assert list(only_valid.sets) == ["valid"]
    with pytest.raises(RnnlabError, match="no test set"):
        build_classification_task(config, CPU, vocab=task.vocab, label_names=task.label_names,
                                  splits=["test"])


def test_one_labelled_file_is_split_three_ways(tmp_path):
    data = write_reviews(tmp_path / "all.csv", 200, seed=3, labels=("neg", "pos"))
    task = build_classification_task(_config(tmp_path, **{"data.text_path": str(data)}), CPU)
    assert {s: len(e) for s, e in task.sets.items()} == {"train": 160, "valid": 20, "test": 20}


def test_unknown_test_label_and_one_class(tmp_path):
    train = write_reviews(tmp_path / "train.csv", 40, seed=1, labels=("neg", "pos"))
    test = write_reviews(tmp_path / "test.csv", 6, seed=2, labels=("neg", "meh"))
    with pytest.raises(RnnlabError, match="label 'meh' is not one of the classes"):
        build_classification_task(
            _config(tmp_path, **{"data.train_path": str(train), "data.test_path": str(test)}), CPU)
    single = write_reviews(tmp_path / "one.csv", 20, seed=1, labels=("pos",))
    with pytest.raises(RnnlabError, match="only one class"):
        build_classification_task(_config(tmp_path, **{"data.train_path": str(single)}), CPU)


def write_imdb(root: Path) -> None:
    """A tiny stand-in for ``root/imdb/{train,test,unsup}.jsonl.gz``; test reviews say "sequel"."""
    folder = root / "imdb"
    folder.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 40), ("test", 10), ("unsup", 2)):
        noun = "sequel" if split == "test" else "movie"
        rows = [{"text": f"{rng.choice(_CUES['pos' if i % 2 else 'neg'])} {noun}<br />Yes!",
                 "label": i % 2, "rating": 8 if i % 2 else 2, "id": f"{split}/x/{i}_1"}
                for i in range(n)]
        if split == "unsup":
            rows = [{"text": r["text"], "id": r["id"]} for r in rows]
        rng.shuffle(rows)
        with gzip.open(folder / f"{split}.jsonl.gz", "wt", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\n" for r in rows)


def test_imdb_corpus_from_the_data_dir(tmp_path):
    write_imdb(tmp_path)
    config = _config(tmp_path, **{"data.corpus": "imdb", "data.data_dir": str(tmp_path),
                                  "data.text_field": "text", "data.label_field": "label"})
    task = build_classification_task(config, CPU)
    assert task.label_names == ["neg", "pos"]
    assert {s: len(e) for s, e in task.sets.items()} == {"train": 36, "valid": 4, "test": 10}


def test_imdb_text_is_unlabelled_and_training_reviews_as_the_classifier_reads_them(tmp_path):
    write_imdb(tmp_path)
    data = load_lm_data(DataConfig(corpus="imdb-text", data_dir=str(tmp_path), split=[0.5, 0.5]))
    words = [data.vocab.itos[i] for s in ("train", "valid") for i in data.splits[s].tolist()]
    # 42 reviews of "<cue> movie <br /> Yes!" tokenised: cue, movie, yes, !, then <eos>.
    assert len(words) == 42 * 5 and words.count("<eos>") == 42
    assert {"movie", "yes", "!"} <= set(words) and "sequel" not in words  # never the test set
    assert not any("<br" in w or "Yes" in w for w in words)


def test_end_to_end_run_with_the_trainer(tmp_path):
    train = write_reviews(tmp_path / "train.csv", 120, seed=1)
    config = _config(tmp_path, **{"data.train_path": str(train), "train.epochs": 1,
                                  "train.max_minutes": 0.0})
    result = rnnlab.train(config, tmp_path / "run")
    assert result.steps == 7  # 108 training examples in batches of 16
    assert result.best is not None and "accuracy" in result.best
    vocab, labels = load_artifacts(tmp_path / "run")
    assert labels == ["mixed", "neg", "pos"] and vocab.itos[0] == "<pad>"
