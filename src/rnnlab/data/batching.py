"""Batching: contiguous streams for language models (truncated BPTT), and length-bucketed
batches of whole examples for classifiers.

For a language model the token stream is cut into ``B`` equal contiguous streams laid side by side::

    stream:  a b c d e f g h i j k l m n o p q r s t u v w x y z
    B = 4:   row 0: a b c d e f        windows of bptt = 3 over columns:
             row 1: g h i j k l          inputs  [:, 0:3]  targets [:, 1:4]
             row 2: m n o p q r          inputs  [:, 3:6]  targets [:, 4:7]  (shifted across
             row 3: s t u v w x                                                the boundary)

Each row is read left to right across steps, so a hidden state carried from one window to the
next always continues the same text. Inputs and targets are views of one (B, L + 1) tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from rnnlab.errors import RnnlabError


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) token ids -> (B, L + 1) streams; row b holds tokens [b*L, (b+1)*L].

    Consecutive rows overlap by one token so that the last target of row b is the token that
    row b+1 starts from: every target except the tail beyond ``B * L`` is predicted exactly once.
    Compact ids (uint16/uint32, e.g. a memory-mapped prepared corpus) give a strided view of
    them instead of a copy, so that the corpus is never loaded whole; ``windows`` converts.
    """
    length = (ids.numel() - 1) // batch_size
    if length < 1:
        raise RnnlabError(
            f"the text has {ids.numel()} tokens, too few for a batch of {batch_size} streams; "
            "use a smaller batch size or a longer text"
        )
    if ids.dtype != torch.long:
        return ids.as_strided((batch_size, length + 1), (length * ids.stride(0), ids.stride(0)))
    starts = torch.arange(batch_size) * length
    return ids[starts[:, None] + torch.arange(length + 1)]  # (B, L + 1), one gather, no loop


def window_lengths(
    total: int, bptt: int, *, variable: bool = False, generator: torch.Generator | None = None
) -> list[int]:
    """Lengths of consecutive BPTT windows that cover ``total`` positions.

    With ``variable``, each window is ``bptt`` with probability 0.95 else ``bptt / 2``, then
    jittered by a normal of std 5 (Merity et al., 2017), so that every token is, over the epochs,
    at every position of a window.
    """
    if not variable:  # arithmetic, not a loop: a billion-token corpus has millions of windows
        return [bptt] * (total // bptt) + ([total % bptt] if total % bptt else [])
    lengths: list[int] = []
    covered = 0
    while covered < total:
        length = bptt
        if variable:
            base = bptt if torch.rand(1, generator=generator).item() < 0.95 else bptt / 2
            length = max(5, int(torch.normal(base, 5.0, (1,), generator=generator).item()))
        length = min(length, total - covered)
        lengths.append(length)
        covered += length
    return lengths


def windows(
    streams: torch.Tensor, lengths: list[int], start: int = 0,
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) pairs of shape (B, T) from ``batchify`` output; views, no copies.

    ``start`` skips the first windows (resuming in the middle of an epoch). Compact streams
    (a memory-mapped corpus) are copied one (B, T + 1) window at a time, as int64 on ``device``.
    """
    position = sum(lengths[:start])
    for length in lengths[start:]:
        block = streams[:, position : position + length + 1]
        if streams.dtype != torch.long:
            block = block.to(device=device, dtype=torch.long)
        yield block[:, :-1], block[:, 1:]
        position += length


def bucket_batches(
    lengths: torch.Tensor | np.ndarray, batch_size: int, seed: int, epoch: int, *,
    chunk_batches: int = 50,
) -> list[np.ndarray]:
    """One epoch's batches of example indices, each batch of similar lengths.

    The examples are shuffled, cut into chunks of ``chunk_batches`` batches, sorted by length
    within each chunk (little padding, yet batches still differ from epoch to epoch), batched,
    and the batches shuffled. A pure function of (seed, epoch); every example appears once.
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed % 2**63, epoch])
    order = rng.permutation(lengths.size)
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, order.size, chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, part.size, batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: torch.Tensor | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed evaluation batches: all examples by length (longest first), no shuffling."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
