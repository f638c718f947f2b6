"""The output layer and cross-entropy fused for the full softmax on a CPU.

``F.cross_entropy(F.linear(x, W, b), y)`` is right everywhere but, on a CPU, spends a training
step's non-matmul time on passes over the (tokens, vocabulary) logits: log-softmax writes a
second copy, the loss's backward fills a zero tensor of that size, and the log-softmax backward
reads two and writes one. Here the forward pass keeps the softmax probabilities, and the backward
pass turns them into ``softmax - one_hot`` in place; the loss scale goes on the much smaller
products instead of on the logits' gradient.

On an AVX2 CPU the weight gradient is computed in blocks of vocabulary rows, each block writing a
contiguous slice of the result, because MKL's single large product is slower there; on AVX-512
the single product was the faster one (figures in benchmarks/RESULTS.md).

Without gradients (evaluation) the log-softmax overwrites the logits, optionally in a buffer the
caller keeps across windows (``logits_buffer``).
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from rnnlab import fast


@functools.cache
def vocab_block() -> int:
    """Rows of the vocabulary per block of the weight gradient; 0: one matmul.

    Blocks pay off with AVX2's MKL kernels, one product with AVX-512's (module docstring).
    """
    return 0 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 1024


def linear_cross_entropy(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    targets: torch.Tensor, reduction: str = "mean", logits_buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """``cross_entropy(features @ weight.T + bias, targets)`` for (N, D) features, (N,) targets.

    Same value and gradients as the two PyTorch calls. For float32 CPU tensors outside autocast
    the fused paths run: the autograd step below when gradients are wanted, else (evaluation) a
    log-softmax written over the logits, in ``logits_buffer`` when it is given and large enough.
    A buffer kept across calls spares one large allocation per call, which glibc serves with
    fresh, page-faulting memory above its mmap threshold. Anything else takes the plain path.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    targets = targets.long()
    if targets.numel() == 0 or not _fused_applies(features, weight):
        return F.cross_entropy(F.linear(features, weight, bias), targets, reduction=reduction)
    scale = 1.0 / targets.numel() if reduction == "mean" else 1.0
    if not _wants_grad(features, weight):
        return _summed_nll(features, weight, bias, targets, logits_buffer) * scale
    return _LinearCrossEntropy.apply(features, weight, bias, targets, scale)


def _fused_applies(features: torch.Tensor, weight: torch.Tensor) -> bool:
    return (features.device.type == "cpu" and features.dtype == torch.float32
            and weight.dtype == torch.float32 and not _cpu_autocast_on())


def _wants_grad(features: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (features.requires_grad or weight.requires_grad)


def _summed_nll(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    targets: torch.Tensor, buffer: torch.Tensor | None,
) -> torch.Tensor:
    """Summed NLL without gradients; the log-probabilities overwrite the logits."""
    size = features.shape[0] * weight.shape[0]
    out = None
    if buffer is not None and buffer.numel() >= size:
        out = buffer.view(-1)[:size].view(features.shape[0], weight.shape[0])
    logits = _logits(features, weight, bias, out)
    log_probs = torch.log_softmax(logits, dim=1, out=logits)
    return log_probs.gather(1, targets[:, None]).sum().neg()


def _cpu_autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument here
        return torch.is_autocast_cpu_enabled()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, targets, scale):  # type: ignore[override]
        features = features.contiguous()
        rows = targets[:, None]
        # Probabilities, not log-probabilities: the backward pass is made from them in place, so
        # no pass over the logits is repeated there. They overwrite the logits (softmax reads
        # each row before writing it), which spares a second (tokens x vocabulary) buffer.
        logits = _logits(features, weight, bias)
        probs = torch.softmax(logits, dim=1, out=logits)
        target_probs = probs.gather(1, rows)
        log_probs = target_probs.log()
        # log(p) is exact enough while p is a normal float; rows whose target probability
        # underflowed (a confidently wrong model) are recomputed in log space.
        tiny = (target_probs < torch.finfo(probs.dtype).tiny).squeeze(1)
        if bool(tiny.any()):
            logits = _logits(features[tiny], weight, bias)
            log_probs[tiny] = torch.log_softmax(logits, dim=1).gather(1, rows[tiny])
        ctx.save_for_backward(features, weight, targets, probs)
        ctx.scale = scale
        ctx.spent = False
        return log_probs.sum().neg() * scale

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        if ctx.spent:  # the saved probabilities became the gradient in place
            raise RuntimeError("linear_cross_entropy cannot be backpropagated through twice")
        ctx.spent = True
        features, weight, targets, grad = ctx.saved_tensors
        grad.scatter_add_(1, targets[:, None], grad.new_full((grad.shape[0], 1), -1.0))
        scale = grad_loss * ctx.scale
        needs = ctx.needs_input_grad
        grad_features = (grad @ weight).mul_(scale) if needs[0] else None
        grad_weight = _weight_grad(grad, features).mul_(scale) if needs[1] else None
        grad_bias = grad.sum(0).mul_(scale) if needs[2] else None  # False for a None bias
        return grad_features, grad_weight, grad_bias, None, None


def _logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            out: torch.Tensor | None = None) -> torch.Tensor:
    if bias is None:
        return torch.mm(features, weight.t(), out=out)
    return torch.addmm(bias, features, weight.t(), out=out)


def _weight_grad(grad: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``grad.T @ features`` (V, D): one matmul, or ``vocab_block()`` vocabulary rows at a time."""
    block = vocab_block()
    if block <= 0 or block >= grad.shape[1]:
        return grad.t() @ features
    out = features.new_empty(grad.shape[1], features.shape[1])
    for start in range(0, grad.shape[1], block):
        stop = start + block
        torch.mm(grad[:, start:stop].t(), features, out=out[start:stop])
    return out


def logits_buffer(decoder: torch.nn.Linear | None, rows: int,
                  device: torch.device) -> torch.Tensor | None:
    """A flat float32 buffer for ``rows`` rows of ``decoder``'s logits, or None.

    None where ``linear_cross_entropy`` could not use it: with the fast paths off, without a
    full softmax (the adaptive softmax never builds full logits), off the CPU (CUDA's allocator
    caches its memory) or for weights that are not float32.
    """
    if (not fast.enabled() or decoder is None or decoder.weight.dtype != torch.float32
            or device.type != "cpu"):
        return None
    return torch.empty(rows * decoder.weight.shape[0], dtype=torch.float32, device=device)
