"""The fused output layer + cross-entropy gives PyTorch's values and gradients."""

import pytest
import torch
from torch.nn import functional as F

from rnnlab.fast import softmax_loss
from rnnlab.fast.softmax_loss import linear_cross_entropy


def _grads(loss_fn, features, weight, bias, targets, reduction):
    leaves = [t.detach().clone().requires_grad_() for t in (features, weight)]
    if bias is not None:
        leaves.append(bias.detach().clone().requires_grad_())
    loss = loss_fn(leaves[0], leaves[1], leaves[2] if bias is not None else None, targets,
                   reduction)
    (loss * 1.7).backward()  # a non-unit upstream gradient must scale every gradient
    return loss.detach(), [leaf.grad for leaf in leaves]


def _plain(features, weight, bias, targets, reduction):
    return F.cross_entropy(F.linear(features, weight, bias), targets, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("block", [7, 0])  # several blocks with a ragged last one; one matmul
def test_matches_pytorch_values_and_gradients(monkeypatch, reduction, with_bias, block):
    monkeypatch.setattr(softmax_loss, "vocab_block", lambda: block)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(40, 12, generator=gen)
    weight = torch.randn(30, 12, generator=gen) * 3  # peaked: some log-probs far below -87
    bias = torch.randn(30, generator=gen) if with_bias else None
    targets = torch.randint(0, 30, (40,), generator=gen)
    want_loss, want = _grads(_plain, features, weight, bias, targets, reduction)
    got_loss, got = _grads(linear_cross_entropy, features, weight, bias, targets, reduction)
    torch.testing.assert_close(got_loss, want_loss)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_non_contiguous_features_and_int32_targets():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(12, 20, generator=gen).t()  # (20, 12), transposed storage
    weight = torch.randn(9, 12, generator=gen).requires_grad_()  # the fused path
    bias = torch.randn(9, generator=gen)
    targets = torch.randint(0, 9, (20,), generator=gen)
    want = _plain(features, weight, bias, targets, "mean")
    fused = linear_cross_entropy(features, weight, bias, targets.int())
    with torch.no_grad():  # evaluation: the log-softmax over the logits
        plain = linear_cross_entropy(features, weight, bias, targets.int())
    torch.testing.assert_close(fused, want)
    torch.testing.assert_close(plain, want)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_evaluation_writes_log_probabilities_into_a_large_enough_buffer(reduction, with_bias):
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(20, 12, generator=gen)
    weight = torch.randn(30, 12, generator=gen) * 3
    bias = torch.randn(30, generator=gen) if with_bias else None
    targets = torch.randint(0, 30, (20,), generator=gen)
    want = _plain(features, weight, bias, targets, reduction)
    log_probs = F.linear(features, weight, bias).log_softmax(1)
    buffer = torch.full((20 * 30 + 5,), 7.0)  # room to spare: the first 600 hold the rows
    small = torch.full((20 * 30 - 1,), 7.0)  # one element short: left alone
    with torch.no_grad():
        for given in (buffer, small, None):
            got = linear_cross_entropy(features, weight, bias, targets, reduction, given)
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(buffer[:600].view(20, 30), log_probs)
    assert torch.all(buffer[600:] == 7.0) and torch.all(small == 7.0)


def test_weight_only_gradient_and_bad_reduction():
    features = torch.randn(5, 4)
    weight = torch.randn(6, 4, requires_grad=True)
    linear_cross_entropy(features, weight, None, torch.tensor([0, 1, 2, 3, 5])).backward()
    assert weight.grad is not None and weight.grad.shape == (6, 4)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(features, weight, None, torch.zeros(5, dtype=torch.long), "none")


def test_other_dtypes_take_the_plain_path():
    features = torch.randn(5, 4, dtype=torch.float64)
    weight = torch.randn(6, 4, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 5])
    got = linear_cross_entropy(features, weight, None, targets, "sum")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _plain(features, weight, None, targets, "sum"))


def test_a_target_probability_that_underflows_keeps_an_exact_finite_loss():
    # Row 0's target sits 200 nats below the best word: exp(-200) is 0 in float32.
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[200.0, 0.0], [0.0, 0.0], [0.0, 3.0]], requires_grad=True)
    targets = torch.tensor([1, 2])
    got_loss, got = _grads(linear_cross_entropy, features, weight, None, targets, "sum")
    want_loss, want = _grads(_plain, features, weight, None, targets, "sum")
    assert torch.isfinite(got_loss) and got_loss > 200
    torch.testing.assert_close(got_loss, want_loss)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_backpropagating_twice_is_refused():
    weight = torch.randn(6, 4, requires_grad=True)
    loss = linear_cross_entropy(torch.randn(3, 4), weight, None, torch.tensor([0, 1, 5]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()
