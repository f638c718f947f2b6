"""Adaptive input (model.input = "adaptive") and embedding dropout over any table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rnnlab.api import LanguageModel
from rnnlab.config import ModelConfig, RunConfig
from rnnlab.data.vocab import EOS, UNK, Vocab
from rnnlab.errors import RnnlabError
from rnnlab.models.adaptive_input import AdaptiveEmbedding
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.models.regularization import embedding_dropout
from rnnlab.training.warm_start import Source, warm_start

pytestmark = pytest.mark.usefixtures("one_thread")

V, E = 50, 16
CUTOFFS = [5, 20]  # bands [0, 5), [5, 20), [20, 50) of sizes 16, 4 and 1


def _model(**fields) -> RNNLanguageModel:
    config = ModelConfig(**{"embedding_dim": E, "hidden_size": 32, "num_layers": 1,
                            "dropout": 0.0, "tie_weights": False, "input": "adaptive",
                            "output": "adaptive", "cutoffs": CUTOFFS, **fields})
    config.validate()
    torch.manual_seed(0)
    return RNNLanguageModel(config, V)


def test_each_token_is_its_bands_vector_projected_up() -> None:
    torch.manual_seed(0)
    table = AdaptiveEmbedding(V, E, CUTOFFS)
    assert [band.embedding_dim for band in table.bands] == [16, 4, 1]
    assert isinstance(table.projections[0], nn.Identity)
    tokens = torch.tensor([[0, 4, 5, 19], [20, 49, 7, 3]])  # (B, T): both edges of each band
    out = table(tokens)
    assert out.shape == (2, 4, E)
    for b in range(2):
        for t in range(4):
            i = int(tokens[b, t])
            band = 0 if i < 5 else 1 if i < 20 else 2
            low = [0, 5, 20][band]
            by_hand = table.projections[band](table.bands[band].weight[i - low])
            torch.testing.assert_close(out[b, t], by_hand, rtol=1e-6, atol=1e-6)


def test_the_rare_bands_hold_few_parameters() -> None:
    table = AdaptiveEmbedding(250_000, 200, [2000, 20000])
    full = 250_000 * 200
    assert sum(p.numel() for p in table.parameters()) < full / 10


def test_a_model_with_adaptive_input_trains_every_band_and_scores_as_its_logits() -> None:
    model = _model().train()
    assert isinstance(model.embedding, AdaptiveEmbedding)
    tokens = torch.arange(V).view(2, V // 2)  # every band's every word
    loss, _ = model.nll(tokens, tokens.roll(1))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing
    model.eval()
    logits, _ = model(tokens)
    by_hand = nn.functional.cross_entropy(logits.flatten(0, 1), tokens.roll(1).flatten())
    torch.testing.assert_close(model.nll(tokens, tokens.roll(1))[0], by_hand,
                               rtol=1e-5, atol=1e-5)


def test_without_a_usable_cutoff_the_input_is_a_plain_table() -> None:
    model = _model(cutoffs=[2000], output="softmax")
    assert isinstance(model.embedding, nn.Embedding)


def test_adaptive_input_cannot_be_tied() -> None:
    with pytest.raises(RnnlabError, match="model.input = 'adaptive' cannot tie weights"):
        ModelConfig(input="adaptive", tie_weights=True).validate()


@pytest.mark.parametrize("adaptive", [False, True])
def test_embedding_dropout_zeroes_every_occurrence_of_a_dropped_type(adaptive: bool) -> None:
    torch.manual_seed(0)
    table = AdaptiveEmbedding(V, E, CUTOFFS) if adaptive else nn.Embedding(V, E)
    tokens = torch.arange(V).repeat(40).view(40, V)  # every type 40 times
    out = embedding_dropout(table, tokens, 0.5)
    with torch.no_grad():
        plain = table(tokens)
    dropped = (out == 0).all(-1)  # (B, T)
    # A type is dropped everywhere or nowhere, at about the rate; the rest are scaled by 2.
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))
    assert 0.2 < dropped[0].float().mean().item() < 0.8
    torch.testing.assert_close(out[~dropped], 2 * plain[~dropped])


def test_embedding_dropout_on_a_plain_table_is_the_row_dropped_lookup() -> None:
    # The same draw as dropping the rows of the table itself: one Bernoulli per row.
    table = nn.Embedding(V, E)
    tokens = torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    out = embedding_dropout(table, tokens, 0.3)
    torch.manual_seed(5)
    keep = torch.empty(V, 1).bernoulli_(0.7) / 0.7
    torch.testing.assert_close(out, nn.functional.embedding(tokens, table.weight * keep),
                               rtol=0, atol=0)


def _saved_run(path: Path) -> Path:
    vocab = Vocab([UNK, EOS, *[f"w{i}" for i in range(V - 2)]], level="word")
    config = RunConfig()
    config.model = _model().config
    LanguageModel(_model(), vocab, config).save(path)
    return path


def test_a_run_with_adaptive_input_saves_loads_and_generates(tmp_path: Path) -> None:
    lm = LanguageModel.load(_saved_run(tmp_path / "run"))
    assert isinstance(lm.model.embedding, AdaptiveEmbedding)
    tokens = torch.arange(V).view(1, V)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(tokens)[0], _model().eval()(tokens)[0])
    [sample] = lm.generate("w1 w2", max_tokens=5, seed=0, stop_at_eos=False)
    assert len(sample.split()) >= 5


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_model_with_adaptive_input_exports_to_onnx(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the export extra is missing")
    pytest.importorskip("onnx", reason="the export extra is missing")
    import numpy as np

    from rnnlab.export.onnx import export_run

    run = _saved_run(tmp_path / "run")
    session = ort.InferenceSession(str(export_run(run, tmp_path / "onnx") / "model.onnx"))
    model = _model().eval()
    ids = torch.tensor([[2, 30, 7, 49]])  # one token of each band, and the last id
    with torch.no_grad():
        expected = model(ids)[0].log_softmax(-1).numpy()  # (1, T, V)
    feeds = {"h": np.zeros((1, 1, 32), np.float32), "c": np.zeros((1, 1, 32), np.float32)}
    for t in range(ids.shape[1]):
        log_probs, *state = session.run(None, {"token": ids[:, t].numpy(), **feeds})
        np.testing.assert_allclose(log_probs, expected[:, t], atol=1e-4)
        feeds = dict(zip(feeds, state, strict=True))


def test_starting_from_a_run_refuses_adaptive_tables_in_one_line(tmp_path: Path) -> None:
    run = _saved_run(tmp_path / "run")
    with pytest.raises(RnnlabError, match="has no word embeddings"):
        Source.read(run)  # an adaptive run as the source
    vocab = Vocab.load(run / "vocab.json")
    plain = Source(run, "lstm", vocab, {"embedding.weight": torch.zeros(V, E)})
    with pytest.raises(RnnlabError, match="needs a model with word embeddings"):
        warm_start(_model(), vocab, plain)  # an adaptive model as the target
