"""Line-by-line language models: framing, padding, fresh states, generation, novelty, data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import rnnlab
from rnnlab import cli, fast
from rnnlab.config import ModelConfig, RunConfig
from rnnlab.config_resolve import resolve_config
from rnnlab.data.vocab import UNK_CHAR, Vocab
from rnnlab.errors import RnnlabError
from rnnlab.lines.data import BOS, EOL, encode_lines, load_line_data
from rnnlab.lines.inference import novelty
from rnnlab.lines.model import LineLanguageModel
from rnnlab.lm.inference import LanguageModel

LETTERS = "abcde"
TINY = {"model.cell": "lstm", "model.embedding_dim": 8, "model.hidden_size": 16,
        "model.num_layers": 1, "model.dropout": 0.0, "model.tie_weights": False,
        "data.level": "char", "data.unit": "line", "data.batch_size": 8,
        "data.eval_batch_size": 16, "train.device": "cpu", "train.threads": 1,
        "train.seed": 3, "train.schedule": "constant", "train.warmup_steps": 0,
        "train.max_steps": 6, "train.eval_every": 6}


def char_vocab() -> Vocab:
    return Vocab([UNK_CHAR, BOS, EOL, *LETTERS], level="char", unk=UNK_CHAR)


def tiny_model(cell: str = "lstm", layers: int = 2, labels: int = 0, **kw: Any
               ) -> LineLanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, embedding_dim=8, hidden_size=12, num_layers=layers,
                         dropout=0.0, tie_weights=False)
    return LineLanguageModel(config, len(char_vocab()), labels, **kw).eval()


def write_lines(path: Path, count: int = 60, seed: int = 0) -> Path:
    rng = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(count):
        n = int(torch.randint(2, 7, (1,), generator=rng))
        lines.append("".join(LETTERS[int(i)] for i in torch.randint(0, 5, (n,), generator=rng)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_lines(tmp_path: Path, name: str = "run", **overrides: Any) -> Path:
    values = {**TINY, "data.text_path": str(write_lines(tmp_path / "lines.txt")), **overrides}
    rnnlab.train(resolve_config(preset="char-fast", overrides=values), tmp_path / name)
    return tmp_path / name


TEXTS = ["abc", "a", "edcbaab", "bb"]


def test_padding_never_counts_a_line_in_a_batch_scores_as_it_does_alone() -> None:
    model = tiny_model().requires_grad_(False)
    lines = encode_lines(char_vocab(), TEXTS)
    for path in ("dense", "packed"):
        model.path = path
        together = model.token_nll(*_args(lines.batch(torch.arange(len(TEXTS)))))  # (B, T)
        for i in range(len(TEXTS)):
            alone = model.token_nll(*_args(lines.batch(torch.tensor([i]))))
            assert float(together[i].sum()) == pytest.approx(float(alone.sum()), abs=1e-5)
            assert bool((together[i, int(lines.lengths[i]):] == 0).all())  # pads score nothing


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("fast_on", [True, False])
def test_dense_and_packed_paths_give_the_same_logits_on_cpu(cell: str, fast_on: bool) -> None:
    model = tiny_model(cell)
    batch = encode_lines(char_vocab(), TEXTS).batch(torch.arange(len(TEXTS)))
    mask = torch.arange(batch.inputs.shape[1])[None, :] < batch.lengths[:, None]
    with fast.enabled_as(fast_on), torch.no_grad():
        model.path = "dense"
        dense = model.decoder(model.line_features(batch.inputs, batch.lengths))[mask]
        model.path = "packed"
        packed = model.decoder(model.line_features(batch.inputs, batch.lengths))[mask]
    torch.testing.assert_close(dense, packed, atol=1e-5, rtol=1e-5)


def test_every_line_starts_from_a_fresh_zero_state() -> None:
    model = tiny_model()
    vocab = char_vocab()
    ids = torch.tensor([[vocab.stoi[BOS], *vocab.encode("edcbaab"), vocab.stoi[EOL]]])
    with torch.no_grad():  # the plain model from the zero state, the line on its own
        reference, _ = model.nll(ids[:, :-1], ids[:, 1:], model.init_state(1), reduction="sum")
    for neighbours in (["a", "edcbaab"], ["bbbbbb", "edcbaab", "c"]):
        lines = encode_lines(vocab, neighbours)
        with torch.no_grad():
            nll = model.token_nll(*_args(lines.batch(torch.arange(len(neighbours))))).sum(1)
        assert float(nll[neighbours.index("edcbaab")]) == pytest.approx(float(reference), abs=1e-5)


def _line_lm(model: LineLanguageModel, labels: list[str] | None = None) -> LanguageModel:
    config = RunConfig()
    config.data.unit, config.data.level = "line", "char"
    return LanguageModel(model, char_vocab(), config, label_names=labels)


def test_generation_stops_at_the_end_symbol_and_keeps_the_prime() -> None:
    model = tiny_model()
    vocab = char_vocab()
    with torch.no_grad():
        model.decoder.bias.zero_()
        model.decoder.bias[vocab.stoi[EOL]] = 50.0  # the end symbol always wins
    lm = _line_lm(model)
    assert lm.generate("ab", 20, num_samples=4, seed=0) == ["ab"] * 4
    assert lm.generate("", 20, num_samples=2, seed=0) == ["", ""]
    with torch.no_grad():
        model.decoder.bias[vocab.stoi[EOL]] = 0.0
        model.decoder.bias[vocab.stoi["c"]] = 50.0  # never ends: stops at max_tokens
    assert lm.generate("ab", 5, num_samples=3, seed=0) == ["abccccc"] * 3
    with pytest.raises(RnnlabError, match="not in the vocabulary"):
        lm.generate("az", 5)


def test_generation_never_samples_the_begin_symbol() -> None:
    model = tiny_model()
    with torch.no_grad():
        model.decoder.bias[char_vocab().stoi[BOS]] = 50.0
    texts = _line_lm(model).generate("", 8, num_samples=5, seed=1)
    assert all(BOS not in t and len(t) <= 8 for t in texts)


def test_novelty_counts_train_held_out_and_new_samples() -> None:
    known = {"train": {"anna", "bob"}, "valid": {"cara", "bob"}, "test": {"dan"}}
    samples = ["anna", "bob", "cara", "dan", "dan", "eve", "anna", ""]
    assert novelty(samples, known) == {"train": 3, "valid/test": 3, "new": 2}


def test_lines_split_by_fraction_with_the_seed_and_skip_empty_lines(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"line{i}" for i in range(40)) + "\n\n  \nlast\n", encoding="utf-8")
    config = RunConfig()
    config.data.corpus, config.data.text_path, config.data.unit = None, str(text), "line"
    config.data.level, config.data.split = "word", [0.8, 0.1, 0.1]
    data = load_line_data(config)
    assert {s: len(v) for s, v in data.sets.items()} == {"train": 33, "valid": 4, "test": 4}
    assert data.stats["empty_lines_skipped"] == 2
    every = [t for s in data.sets.values() for t in s.texts]
    assert sorted(every) == sorted([f"line{i}" for i in range(40)] + ["last"])
    assert load_line_data(config).sets["valid"].texts == data.sets["valid"].texts  # seeded
    config.train.seed += 1
    assert load_line_data(config).sets["valid"].texts != data.sets["valid"].texts
    assert data.vocab.itos[:3] == ["<unk>", BOS, EOL]


def test_a_given_test_file_is_the_test_split_and_valid_is_carved_from_train(
        tmp_path: Path) -> None:
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("\n".join(f"tr{i}" for i in range(40)) + "\n", encoding="utf-8")
    test.write_text("te0\nte1\nte2\n", encoding="utf-8")
    config = RunConfig()
    config.data.corpus, config.data.unit, config.data.level = None, "line", "word"
    config.data.train_path, config.data.test_path = str(train), str(test)
    config.data.split = [0.8, 0.1, 0.1]
    data = load_line_data(config)
    assert data.sets["test"].texts == ["te0", "te1", "te2"]
    assert len(data.sets["valid"]) == 4 and len(data.sets["train"]) == 36
    assert all(t.startswith("tr") for t in data.sets["valid"].texts)


@pytest.mark.parametrize("content, message", [
    ("\n  \n\n", "empty or only whitespace"),
    ("\nonly\n\n", "only one non-empty line"),
])
def test_too_few_lines_are_one_line_errors_and_write_nothing(
        tmp_path: Path, content: str, message: str) -> None:
    text = tmp_path / "few.txt"
    text.write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    with pytest.raises(RnnlabError, match=message):
        rnnlab.train(resolve_config(preset="char-fast", overrides={
            **TINY, "data.text_path": str(text)}), out)
    assert not out.exists()


def test_line_run_end_to_end_records_its_split_and_generates_with_novelty(
        tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    run = train_lines(tmp_path)
    info = json.loads((run / "lines.json").read_text())
    assert info["seed"] == 3 and info["split"] == [0.9, 0.1] and sum(info["lines"].values()) == 60
    assert cli.main(["generate", str(run), "--num-samples", "6", "--prime", "a", "--seed", "1",
                     "--novelty"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7 and all(line.startswith("a") for line in out[:6])
    assert out[6].startswith("novelty of 6 samples:")
    assert cli.main(["eval", str(run), "--split", "valid", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["lines"] == 6 and metrics["tokens"] > metrics["lines"]
    assert metrics["nll_per_line"] == pytest.approx(metrics["loss"] * metrics["tokens"]
                                                    / metrics["lines"])
    lm = LanguageModel.load(run)
    scored = lm.score(["abc", "de"])
    assert [s["tokens"] for s in scored] == [4, 3]  # the characters and the end symbol
    both = lm.evaluate_text("abc\n\nde\n")
    assert -(scored[0]["logprob"] + scored[1]["logprob"]) == pytest.approx(
        both["nll_per_line"] * 2, rel=1e-5)


def test_names_corpus_reads_lines_at_char_level_with_its_preset(tmp_path: Path) -> None:
    folder = tmp_path / "names"
    folder.mkdir()
    (folder / "names.txt").write_text("emma\nolivia\nava\n", encoding="utf-8")
    config = resolve_config(overrides={"data.corpus": "names", "data.data_dir": str(tmp_path)})
    assert (config.preset, config.data.level, config.data.unit) == ("names", "char", "line")
    assert sum(len(s) for s in load_line_data(config).sets.values()) == 3


def test_word_level_lines(tmp_path: Path, one_thread: None) -> None:
    text = tmp_path / "w.txt"
    text.write_text("\n".join(["the cat sat", "a dog ran", "the dog sat"] * 10) + "\n",
                    encoding="utf-8")
    run = tmp_path / "run"
    rnnlab.train(resolve_config(preset="word-small", overrides={
        **TINY, "data.level": "word", "data.text_path": str(text)}), run)
    lm = LanguageModel.load(run)
    assert lm.vocab.itos[:3] == ["<unk>", BOS, EOL]
    texts = lm.generate("the", 6, num_samples=3, seed=0)
    assert all(t.split()[0] == "the" and len(t.split()) <= 7 for t in texts)


def _args(batch: Any) -> tuple:
    return batch.inputs, batch.targets, batch.lengths, batch.labels


def test_the_synthetic_corpus_has_no_lines_to_read(tmp_path: Path) -> None:
    config = resolve_config(overrides={**TINY, "data.corpus": "synthetic", "data.level": "word"})
    with pytest.raises(RnnlabError, match="cannot be read line by line"):
        load_line_data(config)
