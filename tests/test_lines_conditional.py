"""Lines conditioned on a label (folder per label, or labelled tables), and char-level
classification of short texts such as names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import rnnlab
from rnnlab import cli
from rnnlab.api import TextClassifier
from rnnlab.config_resolve import resolve_config
from rnnlab.errors import RnnlabError
from rnnlab.lines.data import BOS
from rnnlab.lm.inference import LanguageModel

TINY = {"model.cell": "gru", "model.embedding_dim": 8, "model.hidden_size": 16,
        "model.num_layers": 1, "model.dropout": 0.0, "model.tie_weights": False,
        "data.level": "char", "data.unit": "line", "data.batch_size": 8,
        "data.eval_batch_size": 16, "train.device": "cpu", "train.threads": 1,
        "train.seed": 3, "train.lr": 0.02, "train.schedule": "constant",
        "train.warmup_steps": 0, "train.max_steps": 40, "train.eval_every": 40}
# Three "languages" whose names are easy to tell apart by their letters.
LANGUAGES = {"Aish": "ab", "Cish": "cd", "Eish": "ef"}


def write_folder(root: Path, per_label: int = 20) -> Path:
    folder = root / "names"
    folder.mkdir()
    rng = torch.Generator().manual_seed(0)
    for label, letters in LANGUAGES.items():
        lines = []
        for _ in range(per_label):
            n = int(torch.randint(3, 7, (1,), generator=rng))
            lines.append("".join(letters[int(i)] for i in torch.randint(0, 2, (n,),
                                                                           generator=rng)))
        (folder / f"{label}.txt").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return folder


def train(source: Path, out: Path, **overrides: Any) -> Path:
    rnnlab.train(resolve_config(preset="char-fast", overrides={
        **TINY, "data.text_path": str(source), **overrides}), out)
    return out


@pytest.fixture
def conditioned(tmp_path: Path, one_thread: None) -> Path:
    return train(write_folder(tmp_path), tmp_path / "run")


def test_label_conditioning_sets_the_samples_apart(conditioned: Path) -> None:
    lm = LanguageModel.load(conditioned)
    assert lm.label_names == list(LANGUAGES)
    for label, letters in LANGUAGES.items():
        texts = lm.generate("", 12, label=label, num_samples=20, seed=0, temperature=0.5)
        chars = "".join(texts)
        assert sum(c in letters for c in chars) > 0.8 * len(chars), (label, texts)
    same_seed = [lm.generate("", 12, label=label, num_samples=5, seed=1) for label in LANGUAGES]
    assert same_seed[0] != same_seed[1] != same_seed[2]


def test_unknown_or_missing_label_is_a_one_line_error_listing_the_labels(
        conditioned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["generate", str(conditioned), "--label", "Klingon"]) == 2
    err = capsys.readouterr().err
    assert "unknown label 'Klingon'" in err and "Aish, Cish, Eish" in err
    assert len(err.strip().splitlines()) == 1
    lm = LanguageModel.load(conditioned)
    with pytest.raises(RnnlabError, match="conditioned on a label"):
        lm.generate("", 5)
    assert cli.main(["generate", str(conditioned), "--label", "Cish", "--num-samples", "3",
                     "--seed", "0", "--novelty"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[3].startswith("novelty of 3 samples")


def test_score_reads_a_line_under_the_given_label(conditioned: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("abab\n", encoding="utf-8")
    scores = {}
    for label in ("Aish", "Eish"):
        assert cli.main(["score", str(conditioned), "--file", str(lines), "--label", label]) == 0
        scores[label] = json.loads(capsys.readouterr().out)["logprob"]
    assert scores["Aish"] > scores["Eish"]  # "abab" is written in Aish's letters
    assert cli.main(["score", str(conditioned), "--file", str(lines)]) == 2
    assert "conditioned on a label" in capsys.readouterr().err


def test_the_labels_are_saved_and_a_copy_of_the_model_keeps_them(
        conditioned: Path, tmp_path: Path) -> None:
    saved = json.loads((conditioned / "vocab.json").read_text(encoding="utf-8"))
    assert saved["labels"] == list(LANGUAGES) and BOS in saved["tokens"]
    copy = LanguageModel.load(conditioned).save(tmp_path / "copy")
    assert LanguageModel.load(copy).label_names == list(LANGUAGES)


def test_a_label_for_an_unlabelled_line_model_is_an_error(tmp_path: Path,
                                                          one_thread: None) -> None:
    text = tmp_path / "plain.txt"
    text.write_text("\n".join(["abc", "cab", "bca", "ab"] * 5) + "\n", encoding="utf-8")
    lm = LanguageModel.load(train(text, tmp_path / "run", **{"train.max_steps": 2}))
    with pytest.raises(RnnlabError, match="not trained on labelled lines"):
        lm.generate("", 5, label="Aish")


def test_labelled_jsonl_lines_with_a_named_label_field(tmp_path: Path, one_thread: None) -> None:
    path = tmp_path / "lines.jsonl"
    rows = [{"name": w, "lang": "x" if w[0] == "a" else "y"}
            for w in ["ab", "aab", "aba", "abb", "ba", "bba", "bab", "bb"] * 3]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    run = train(path, tmp_path / "run", **{"train.max_steps": 2, "data.text_field": "name",
                                           "data.label_field": "lang"})
    assert LanguageModel.load(run).label_names == ["x", "y"]


def _refused(tmp_path: Path, source: Path, message: str, **overrides: Any) -> None:
    out = tmp_path / "run"
    with pytest.raises(RnnlabError, match=message) as caught:
        train(source, out, **overrides)
    assert "\n" not in str(caught.value)
    assert not out.exists()  # nothing written


def test_a_label_with_a_single_example_is_refused(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "Zish.txt").write_text("\nzz\n", encoding="utf-8")
    _refused(tmp_path, folder, "label 'Zish' has a single example")


def test_a_row_without_the_label_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lines.jsonl"
    rows = [{"text": "ab", "label": "x"}, {"text": "cd"}, {"text": "ef", "label": "y"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    _refused(tmp_path, path, "line 2: no label field 'label'")


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "Bish.txt").write_bytes(b"caf\xe9\nna\xefve\n")
    _refused(tmp_path, folder, "not valid UTF-8")


@pytest.mark.slow
def test_char_level_classification_end_to_end(tmp_path: Path, one_thread: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path, per_label=30)
    run = tmp_path / "clf"
    config = resolve_config(overrides={
        "task": "classify", "data.text_path": str(folder), "data.level": "char",
        "data.split": "0.7,0.15,0.15", "model.embedding_dim": 8, "model.hidden_size": 16,
        "model.bidirectional": False, "model.pooling": "mean", "data.batch_size": 8,
        "data.min_freq": 1, "train.max_steps": 60, "train.eval_every": 60, "train.lr": 0.02,
        "train.device": "cpu", "train.threads": 1, "train.max_minutes": 0})
    rnnlab.train(config, run)
    clf = TextClassifier.load(run)
    assert clf.vocab.level == "char" and clf.label_names == list(LANGUAGES)
    assert set(clf.vocab.itos[2:]) == set("abcdef")
    predicted = [r["label"] for r in clf.predict(["abba", "dccd", "feef"])]
    assert predicted == list(LANGUAGES)
    assert cli.main(["eval", str(run), "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] > 0.9 and set(report["per_class"]) == set(LANGUAGES)
