"""train.init_from: a classifier (or language model) starts from a finished run's weights."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.config_resolve import resolve_config
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError
from rnnlab.models.classifier import RNNClassifier
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.training.warm_start import Source, warm_start


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, make_word_corpus, make_tiny_overrides) -> Path:
    """A tiny word language model (embedding 16, 1 x 32 LSTM) trained on the toy corpus."""
    folder = tmp_path_factory.mktemp("lm")
    corpus = make_word_corpus(folder / "corpus.txt")
    config = resolve_config(preset="synthetic", overrides=make_tiny_overrides(
        data__text_path=str(corpus), train__max_steps=5))
    return rnnlab.train(config, folder / "run").run_dir


def _classifier(cell: str = "lstm", embedding_dim: int = 16) -> tuple[RNNClassifier, Vocab]:
    config = resolve_config(preset="imdb-bilstm", overrides={
        "model.cell": cell, "model.embedding_dim": embedding_dim, "model.hidden_size": 32})
    vocab = Vocab(["<pad>", "<unk>", "cat", "dog", "zebra"])
    torch.manual_seed(0)
    return RNNClassifier(config.model, len(vocab), 2), vocab


def test_shared_words_and_forward_layer_are_copied(lm_run: Path) -> None:
    model, vocab = _classifier()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    started = warm_start(model, vocab, Source.read(lm_run))

    source = ckpt.read_weights(lm_run / ckpt.BEST)
    source_vocab = Vocab.load(lm_run / ckpt.VOCAB)
    assert "zebra" not in source_vocab and "<pad>" not in source_vocab  # so they stay fresh
    assert started.words == 3 and started.vocab_size == 5  # <unk>, cat, dog
    weight = model.embedding.weight.detach()
    for word in ("<unk>", "cat", "dog"):
        assert torch.equal(weight[vocab.stoi[word]],
                           source["embedding.weight"][source_vocab.stoi[word]])
    for word in ("<pad>", "zebra"):
        assert torch.equal(weight[vocab.stoi[word]], fresh["embedding.weight"][vocab.stoi[word]])
    forward = ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"]
    assert sorted(started.recurrent) == sorted(forward)
    state = model.state_dict()
    for name in forward:
        assert torch.equal(state[name], source[name])
        assert torch.equal(state[f"{name}_reverse"], fresh[f"{name}_reverse"])
    assert "3 of 5 words and 4 recurrent tensors" in started.describe()


def test_recurrent_weights_stay_fresh_when_not_asked_for(lm_run: Path) -> None:
    model, vocab = _classifier()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    started = warm_start(model, vocab, Source.read(lm_run), recurrent_weights=False)
    assert started.words == 3 and started.recurrent == []
    assert not torch.equal(model.embedding.weight, fresh["embedding.weight"])
    for name, tensor in model.rnn.state_dict().items():
        assert torch.equal(tensor, fresh[f"rnn.{name}"])


def test_another_cell_takes_the_embeddings_only(lm_run: Path) -> None:
    model, vocab = _classifier(cell="gru")
    started = warm_start(model, vocab, Source.read(lm_run))
    assert started.words == 3 and started.recurrent == []


def test_embedding_size_mismatch_is_a_clear_error(lm_run: Path) -> None:
    model, vocab = _classifier(embedding_dim=24)
    with pytest.raises(RnnlabError, match="16-dimensional embeddings.*embedding_dim is 24"):
        warm_start(model, vocab, Source.read(lm_run))


def test_one_hot_source_is_refused(tmp_path: Path, train_tiny) -> None:
    run = train_tiny(model__input="onehot", train__max_steps=2).run_dir
    with pytest.raises(RnnlabError, match="has no word embeddings"):
        Source.read(run)


def test_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match="run directory not found"):
        Source.read(tmp_path / "nowhere")


def test_training_from_a_language_model(lm_run: Path, tmp_path: Path, capsys) -> None:
    """Through the CLI's path: the classifier's first weights are the language model's."""
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(64):
        label = ("neg", "pos")[i % 2]
        cue = "cat" if label == "pos" else "dog"
        rows.append(f"the old man {cue} {rng.choice(['sees', 'likes'])} a tree,{label}")
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = resolve_config(preset="imdb-bilstm", overrides={
        "data.train_path": str(data), "data.min_freq": 1, "model.embedding_dim": 16,
        "model.hidden_size": 32, "train.max_steps": 1, "train.lr": 1e-12,
        "train.warmup_steps": 0, "train.init_from": str(lm_run), "train.device": "cpu"})
    run = rnnlab.train(config, tmp_path / "clf").run_dir
    assert f"started from {lm_run}: embeddings of" in capsys.readouterr().out

    weights = ckpt.read_weights(run / ckpt.BEST)
    source = ckpt.read_weights(lm_run / ckpt.BEST)
    vocab, source_vocab = Vocab.load(run / ckpt.VOCAB), Vocab.load(lm_run / ckpt.VOCAB)
    cat, source_cat = vocab.stoi["cat"], source_vocab.stoi["cat"]
    # One step at a negligible learning rate: still the language model's embeddings, but not
    # its LSTM (the preset's init_recurrent = false).
    assert torch.allclose(weights["embedding.weight"][cat], source["embedding.weight"][source_cat],
                          atol=1e-6)
    assert not torch.allclose(weights["rnn.weight_hh_l0"], source["rnn.weight_hh_l0"], atol=1e-3)
    assert ckpt.load_config(run).train.init_from == str(lm_run)
    assert ckpt.load_config(run).train.init_recurrent is False


def test_a_language_model_can_start_from_another(lm_run: Path, tmp_path: Path) -> None:
    config = ckpt.load_config(lm_run)
    vocab = Vocab.load(lm_run / ckpt.VOCAB)
    model = RNNLanguageModel(config.model, len(vocab))
    started = warm_start(model, vocab, Source.read(lm_run))
    assert started.words == len(vocab) and len(started.recurrent) == 4
    assert torch.equal(model.embedding.weight, ckpt.read_weights(lm_run / ckpt.BEST)
                       ["embedding.weight"])
