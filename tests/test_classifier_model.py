"""RNNClassifier: both execution paths agree, padding never leaks, a tanh RNN learns."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnlab.config import CELLS, POOLINGS, ModelConfig
from rnnlab.errors import RnnlabError
from rnnlab.models.classifier import RNNClassifier

VOCAB = 40


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def _model(cell="lstm", bidirectional=True, pooling="last", layers=2, **kw) -> RNNClassifier:
    config = ModelConfig(cell=cell, embedding_dim=8, hidden_size=6, num_layers=layers,
                         bidirectional=bidirectional, pooling=pooling, dropout=0.3, **kw)
    return RNNClassifier(config, VOCAB, 3).eval()


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    tokens = torch.randint(1, VOCAB, (len(lengths), max(lengths)), generator=generator)
    tokens[torch.arange(max(lengths))[None, :] >= lengths_t[:, None]] = 0
    return tokens, lengths_t


LENGTHS = [1, 23, 4, 40, 9, 2]  # very different lengths, unsorted


@pytest.mark.parametrize("cell, bidirectional", list(itertools.product(CELLS, [False, True])))
def test_packed_and_dense_paths_give_the_same_logits(cell, bidirectional):
    torch.manual_seed(0)
    tokens, lengths = _batch(LENGTHS)
    for pooling, layers in itertools.product(POOLINGS, [1, 2]):
        model = _model(cell, bidirectional, pooling, layers)
        model.path = "packed"
        packed = model(tokens, lengths)
        model.path = "dense"
        dense = model(tokens, lengths)
        assert packed.shape == (len(LENGTHS), 3)
        torch.testing.assert_close(dense, packed, atol=1e-5, rtol=0, msg=f"{pooling} {layers}")


def test_paths_give_the_same_gradients():
    torch.manual_seed(1)
    tokens, lengths = _batch(LENGTHS)
    model = _model("lstm", True, "concat", 2)
    grads = {}
    for path in ("packed", "dense"):
        model.zero_grad()
        model.path = path
        model(tokens, lengths).sum().backward()
        grads[path] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["packed"], grads["dense"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("path", ["packed", "dense"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_content_does_not_change_logits(path, pooling):
    torch.manual_seed(2)
    tokens, lengths = _batch(LENGTHS)
    model = _model("gru", True, pooling, 2)
    model.path = path
    reference = model(tokens, lengths)
    noisy = tokens.clone()
    pads = torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]
    noisy[pads] = torch.randint(1, VOCAB, (int(pads.sum()),))
    wider = torch.cat([noisy, torch.randint(1, VOCAB, (len(LENGTHS), 7))], dim=1)  # extra pads
    torch.testing.assert_close(model(noisy, lengths), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(wider, lengths), reference, atol=1e-6, rtol=0)


def test_last_pooling_reads_backward_state_at_position_zero():
    """A bidirectional "last" feature equals running each sequence alone, unpadded."""
    torch.manual_seed(3)
    tokens, lengths = _batch([5, 2])
    model = _model("lstm", True, "last", 1)
    model.path = "dense"
    together = model(tokens, lengths)
    alone = model(tokens[1:, :2], lengths[1:])
    torch.testing.assert_close(together[1:], alone, atol=1e-6, rtol=0)


def test_auto_path_is_dense_on_cpu_and_options_are_checked():
    model = _model()
    assert model.path == "auto"
    with pytest.raises(RnnlabError, match="path must be one of"):
        model.path = "fast"
    with pytest.raises(RnnlabError, match="at least 2 classes"):
        RNNClassifier(ModelConfig(), VOCAB, 1)


@pytest.mark.parametrize("path", ["packed", "dense"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_a_row_without_tokens_is_refused_not_pooled(path, pooling):
    # Pooling nothing has no meaning (mean divides by zero, last reads index -1): the data
    # pipeline leaves such texts out, and the model says so if one slips through.
    model = _model(pooling=pooling)
    model.path = path
    tokens, lengths = _batch([3, 1, 2])
    lengths[1] = 0
    tokens[1] = 0
    with pytest.raises(ValueError, match="row 1 has no tokens"):
        model(tokens, lengths)


def test_state_dict_holds_only_the_stack_weights():
    model = _model("lstm", True, "mean", 2)
    keys = set(model.state_dict())
    assert "rnn.weight_hh_l1_reverse" in keys and "embedding.weight" in keys
    assert not any("twin" in k for k in keys)
    assert model.embedding.padding_idx == 0
    assert model.num_parameters() == sum(p.numel() for p in model.state_dict().values())


def _marker_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Label 1 iff marker token 1 occurs somewhere in a sequence of 4..20 random tokens."""
    lengths = torch.randint(4, 21, (n,), generator=generator)
    tokens = torch.randint(2, 20, (n, 20), generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    where = (torch.rand(n, generator=generator) * lengths).long()
    tokens[labels == 1, where[labels == 1]] = 1
    tokens[torch.arange(20)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths, labels


@pytest.mark.slow
def test_plain_tanh_rnn_learns_a_marker_task():
    torch.manual_seed(4)
    generator = torch.Generator().manual_seed(4)
    config = ModelConfig(cell="rnn_tanh", embedding_dim=16, hidden_size=32, num_layers=1,
                         bidirectional=False, pooling="last", dropout=0.0)
    model = RNNClassifier(config, 20, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        tokens, lengths, labels = _marker_data(32, generator)
        loss = torch.nn.functional.cross_entropy(model(tokens, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    tokens, lengths, labels = _marker_data(500, generator)
    with torch.no_grad():
        accuracy = (model.eval()(tokens, lengths).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9
