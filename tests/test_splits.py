"""Carving validation data: one rule for streams of text and for labelled examples."""

from __future__ import annotations

import numpy as np
import pytest

from rnnlab.config import DataConfig
from rnnlab.data.splits import carve, held_out_fractions, split_validation


def test_a_stream_gives_up_its_end_in_order() -> None:
    tokens = [str(i) for i in range(100)]
    train, valid, test = carve([0.8, 0.1, 0.1], tokens=tokens)
    assert train + valid + test == tokens
    assert (len(train), len(valid), len(test)) == (80, 10, 10)


def test_labelled_examples_give_up_each_labels_share_and_keep_one_for_training() -> None:
    labels = ["a"] * 50 + ["b"] * 10 + ["c"]
    train, valid = carve([0.8, 0.2], labels=labels, seed=5)
    assert sorted([*train, *valid]) == list(range(len(labels)))
    assert [labels[i] for i in valid].count("a") == 10
    assert [labels[i] for i in valid].count("b") == 2
    assert "c" in [labels[i] for i in train]  # a label's only example stays in train
    again = carve([0.8, 0.2], labels=labels, seed=5)
    assert np.array_equal(again[1], valid)


def test_holding_out_one_fraction_is_the_stratified_split() -> None:
    labels = ["pos", "neg", "neg", "pos", "neg"] * 20
    train, valid = carve([0.8, 0.2], labels=labels, seed=3)
    expected_train, expected_valid = split_validation(labels, 0.2, seed=3)
    assert np.array_equal(train, expected_train) and np.array_equal(valid, expected_valid)


def test_a_fraction_of_zero_gives_no_labelled_piece() -> None:
    assert carve([0.9, 0.1, 0.0], labels=["a", "b"] * 10, seed=1)[2] is None


def test_each_task_keeps_its_own_held_out_fraction() -> None:
    data = DataConfig()
    assert held_out_fractions(data, "lm") == [0.9, 0.1, 0.0]
    assert held_out_fractions(data, "classify") == pytest.approx([0.8, 0.2])


def test_carve_needs_exactly_one_kind_of_data() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        carve([0.9, 0.1])
