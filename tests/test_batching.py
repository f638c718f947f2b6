"""Contiguous-stream batching: nothing lost, nothing predicted twice, state-continuous windows."""

from __future__ import annotations

import pytest
import torch

from rnnlab.data.batching import batchify, window_lengths, windows
from rnnlab.errors import RnnlabError


def _stream(n: int) -> torch.Tensor:
    # Distinct values (not 0..n-1) so that a token equal to its own position cannot hide a bug.
    return torch.arange(n) * 7 + 3


def test_batchify_shape_and_rows() -> None:
    ids = _stream(26)
    streams = batchify(ids, 4)
    length = (26 - 1) // 4
    assert streams.shape == (4, length + 1)
    for b in range(4):  # row b holds tokens [b*L, (b+1)*L], overlapping the next row by one
        assert torch.equal(streams[b], ids[b * length : (b + 1) * length + 1])


@pytest.mark.parametrize(("n", "batch_size"), [(26, 4), (101, 3), (50, 7), (2, 1), (9, 8)])
def test_every_target_predicted_exactly_once(n: int, batch_size: int) -> None:
    ids = _stream(n)
    streams = batchify(ids, batch_size)
    length = streams.shape[1] - 1
    # Inputs and targets read row by row must give back the stream and the stream shifted by one.
    inputs = streams[:, :-1].reshape(-1)
    targets = streams[:, 1:].reshape(-1)
    assert torch.equal(inputs, ids[: batch_size * length])
    assert torch.equal(targets, ids[1 : batch_size * length + 1])
    # Only the tail beyond B * L (fewer than B tokens) is never a target.
    assert n - 1 - batch_size * length < batch_size


def test_windows_targets_are_inputs_shifted_across_boundaries() -> None:
    ids = _stream(101)
    streams = batchify(ids, 4)  # L = 25
    lengths = window_lengths(streams.shape[1] - 1, 7)
    assert lengths == [7, 7, 7, 4]
    pairs = list(windows(streams, lengths))
    for inputs, targets in pairs:
        assert inputs.shape == targets.shape
        assert torch.equal(inputs[:, 1:], targets[:, :-1])  # shifted by one inside a window
    for (_, targets), (next_inputs, next_targets) in zip(pairs, pairs[1:], strict=False):
        # The next window starts where the previous one's targets ended: a carried hidden state
        # continues the same text, and the next target is the token after the last one.
        assert torch.equal(next_inputs[:, 0], targets[:, -1])
        for row in range(4):
            last = (ids == targets[row, -1]).nonzero().item()
            assert next_targets[row, 0] == ids[last + 1]
    # Concatenated over windows, the targets are exactly the target columns of the streams.
    assert torch.equal(torch.cat([t for _, t in pairs], dim=1), streams[:, 1:])
    assert torch.equal(torch.cat([i for i, _ in pairs], dim=1), streams[:, :-1])


def test_windows_are_views_not_copies() -> None:
    streams = batchify(_stream(41), 2)
    inputs, targets = next(windows(streams, window_lengths(streams.shape[1] - 1, 5)))
    assert inputs.untyped_storage().data_ptr() == streams.untyped_storage().data_ptr()
    assert targets.untyped_storage().data_ptr() == streams.untyped_storage().data_ptr()


def test_start_skips_windows() -> None:
    streams = batchify(_stream(101), 4)
    lengths = window_lengths(streams.shape[1] - 1, 7)
    every = list(windows(streams, lengths))
    resumed = list(windows(streams, lengths, start=2))
    assert len(resumed) == len(every) - 2
    for (a, b), (c, d) in zip(every[2:], resumed, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert list(windows(streams, lengths, start=len(lengths))) == []


def test_fixed_windows_cover_the_total() -> None:
    assert window_lengths(10, 5) == [5, 5]
    assert window_lengths(11, 5) == [5, 5, 1]
    assert window_lengths(3, 35) == [3]
    assert window_lengths(0, 5) == []


def test_variable_windows_cover_exactly_the_total() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = window_lengths(10_000, 35, variable=True, generator=generator)
    assert sum(lengths) == 10_000
    assert all(length >= 1 for length in lengths)
    assert all(length >= 5 for length in lengths[:-1])  # only the last may be cut short
    assert len(set(lengths)) > 5  # the lengths really vary
    # About 5% of windows are drawn around bptt / 2; the mean lies between the two.
    assert 25 < sum(lengths) / len(lengths) < 36


def test_variable_windows_reproducible_with_seed() -> None:
    def draw(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return window_lengths(5_000, 35, variable=True, generator=generator)

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_variable_windows_feed_windows() -> None:
    ids = _stream(2_001)
    streams = batchify(ids, 5)
    total = streams.shape[1] - 1
    generator = torch.Generator().manual_seed(3)
    lengths = window_lengths(total, 20, variable=True, generator=generator)
    targets = torch.cat([t for _, t in windows(streams, lengths)], dim=1)
    assert torch.equal(targets, streams[:, 1:])


@pytest.mark.parametrize(("n", "batch_size"), [(0, 1), (1, 1), (5, 5), (10, 20)])
def test_too_short_text_is_an_error(n: int, batch_size: int) -> None:
    with pytest.raises(RnnlabError, match="too few"):
        batchify(_stream(n), batch_size)
