"""The Python API: load a trained run, measure text and splits, sample, save and reload."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.api import LanguageModel
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import load_lm_data
from rnnlab.lm.evaluation import evaluate_stream

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, make_word_corpus: Callable[..., Path],
             make_tiny_overrides: Callable[..., dict[str, Any]]) -> Path:
    """A tiny LM trained on a local word-level text file (train 80%, valid 10%, test 10%)."""
    folder = tmp_path_factory.mktemp("api")
    corpus = make_word_corpus(folder / "corpus.txt", lines=600)
    previous = torch.get_num_threads()
    overrides = make_tiny_overrides(data__text_path=str(corpus), data__split=[0.8, 0.1, 0.1],
                               data__batch_size=8, train__max_steps=40, train__eval_every=20)
    config = rnnlab.resolve_config(preset="synthetic", overrides=overrides)
    result = rnnlab.train(config, folder / "run")
    torch.set_num_threads(previous)
    return result.run_dir


def test_load_gives_a_model_in_eval_mode_with_its_vocabulary(text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    assert not lm.model.training
    assert lm.config.data.text_path is not None and lm.config.data.corpus is None
    assert "cat" in lm.vocab and lm.vocab.level == "word"
    assert lm.run_dir == text_run


def test_evaluate_splits_match_the_stream_evaluation(text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    data = load_lm_data(lm.config.data, lm.vocab)
    for split in ("valid", "test"):
        metrics = lm.evaluate(split)
        ids = data.splits[split]
        total, count = evaluate_stream(lm.model, ids, lm.config.data.eval_batch_size,
                                       lm.config.data.bptt)
        assert metrics["tokens"] == count == ids.numel() - 1
        assert metrics["loss"] == pytest.approx(total / count, rel=1e-6)
        assert metrics["ppl"] == pytest.approx(math.exp(metrics["loss"]))
    best = max((r for r in ckpt.read_metrics(text_run) if r["best"]), key=lambda r: r["step"])
    assert lm.evaluate("valid")["loss"] == pytest.approx(best["loss"], rel=1e-6)


def test_evaluate_a_split_the_run_does_not_have(tmp_path: Path, text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    lm.config.data.split = [0.9, 0.1]  # as if the run had been trained without a test part
    with pytest.raises(RnnlabError, match="no test split"):
        lm.evaluate("test")


def test_evaluate_text_counts_targets_and_unknown_tokens(text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    text = "the cat sees a zebra\nmy friend hears the river\n"
    metrics = lm.evaluate_text(text)
    # 5 + 1 and 5 + 1 tokens with <eos>: 11 targets; "zebra" is unknown.
    assert metrics["tokens"] == 11 and metrics["unknown"] == 1
    assert lm.perplexity(text) == pytest.approx(math.exp(metrics["loss"]))
    with pytest.raises(RnnlabError, match="at least two tokens"):
        lm.evaluate_text("")


def test_evaluate_text_batch_sizes_count_every_target(text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    text = "the cat sees the ball today\n" * 9
    counts = {b: lm.evaluate_text(text, batch_size=b)["tokens"] for b in (1, 4, 100)}
    assert counts == {1: 62, 4: 62, 100: 62}
    assert lm.evaluate_text(text, batch_size=100)["batch_size"] == 62


def test_generate_after_load_is_reproducible(text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    a = lm.generate("the cat", 12, seed=3, num_samples=2)
    assert a == LanguageModel.load(text_run).generate("the cat", 12, seed=3, num_samples=2)
    assert len(a) == 2 and all(len(t.split()) >= 1 for t in a)
    vocabulary = set(lm.vocab.itos)
    assert set(" ".join(a).split()) <= vocabulary


def test_save_then_load_gives_identical_logits(tmp_path: Path, text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    out = lm.save(tmp_path / "copy")
    again = LanguageModel.load(out)
    tokens = torch.tensor([lm.vocab.encode("the cat sees the ball".split())])
    with torch.no_grad():
        assert torch.equal(lm.model(tokens)[0], again.model(tokens)[0])
    assert again.vocab.itos == lm.vocab.itos
    assert (out / ckpt.METRICS).read_text() == (text_run / ckpt.METRICS).read_text()


def test_load_last_weights(text_run: Path) -> None:
    last = LanguageModel.load(text_run, weights="last")
    state = ckpt.load_trainer_state(text_run / ckpt.TRAINER)
    expected = load_file(text_run / state["weights"])
    assert all(torch.equal(last.model.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(RnnlabError, match="best' or 'last"):
        LanguageModel.load(text_run, weights="middle")


def test_load_errors_are_rnnlab_errors(tmp_path: Path, text_run: Path) -> None:
    with pytest.raises(RnnlabError, match="not found"):
        LanguageModel.load(tmp_path / "missing")
    broken = tmp_path / "broken"
    LanguageModel.load(text_run).save(broken)
    (broken / ckpt.BEST).unlink()
    with pytest.raises(RnnlabError, match="no model.safetensors"):
        LanguageModel.load(broken)
    (broken / ckpt.VOCAB).write_text("{oops", encoding="utf-8")
    with pytest.raises(RnnlabError, match="corrupted"):
        LanguageModel.load(broken)


def test_perplexity_of_a_text_reads_it_as_one_stream(text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    text = "the cat sees the ball\nmy friend hears the river today\n"
    ids = torch.tensor(lm.vocab.encode(
        [w for line in text.splitlines() for w in [*line.split(), "<eos>"]]))
    total, count = evaluate_stream(lm.model, ids, 1, lm.config.data.bptt)
    one_stream = math.exp(total / count)
    for default in (10, 3):  # the split evaluation's batch size plays no part
        lm.config.data.eval_batch_size = default
        assert lm.perplexity(text) == pytest.approx(one_stream, rel=1e-6)
        assert lm.evaluate_text(text)["batch_size"] == 1
    # An explicit batch size still cuts the text into rows, each starting from an empty state.
    rows = lm.evaluate_text(text, batch_size=4)
    assert rows["batch_size"] == 4 and rows["tokens"] == count
    with pytest.raises(RnnlabError, match="batch size"):
        lm.evaluate_text(text, batch_size=0)


def test_save_refuses_an_existing_run_unless_told_to_overwrite(tmp_path: Path,
                                                               text_run: Path) -> None:
    lm = LanguageModel.load(text_run)
    other = tmp_path / "other"
    shutil.copytree(text_run, other)  # a whole run: trainer.pt, last-*, logs
    (other / "labels.txt").write_text("pos\nneg\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    with pytest.raises(RnnlabError, match="overwrite") as info:
        lm.save(other)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before

    out = lm.save(other, overwrite=True)
    assert out == other
    # Replaced whole: nothing of the previous run is left beside the new one.
    assert sorted(p.name for p in other.iterdir()) == sorted(
        [ckpt.CONFIG, ckpt.VOCAB, ckpt.BEST, ckpt.METRICS])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # no temporary left
    again = LanguageModel.load(other)
    assert again.vocab.itos == lm.vocab.itos
    with pytest.raises(RnnlabError, match="nothing to resume"):
        LanguageModel.load(other, weights="last")
    (tmp_path / "empty").mkdir()
    assert lm.save(tmp_path / "empty") == tmp_path / "empty"  # an empty folder is no run


def test_the_package_gives_every_public_name_and_refuses_others() -> None:
    for name in rnnlab.__all__:
        assert getattr(rnnlab, name) is not None
        assert name in dir(rnnlab)
    assert rnnlab.train is rnnlab.training.runner.train
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        rnnlab.trian  # noqa: B018
