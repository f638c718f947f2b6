"""``benchmarks/lm_throughput.py`` and ``mfu_ceiling.py`` run, count matmul FLOPs exactly and
report unrounded figures whose ratios agree with each other; the plain PyTorch yardstick trains
the same model. No test bounds a measured time: machines differ in speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnlab.config_resolve import resolve_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from mfu_ceiling import summary  # noqa: E402
from plain_lm import PlainTrainer  # noqa: E402

TINY = ["model.embedding_dim=16", "model.hidden_size=16", "model.num_layers=2",
        "model.dropout=0.1", "model.tie_weights=true", "data.batch_size=4", "data.bptt=5"]


def _config(extra: dict[str, object] | None = None):
    overrides = dict(item.split("=", 1) for item in TINY)
    return resolve_config(preset="word-small", overrides={**overrides, **(extra or {})})


def _run_benchmark(script: str, *options: str) -> dict:
    """The JSON that ``benchmarks/SCRIPT`` prints for a tiny word-small, on one thread."""
    args = [sys.executable, str(BENCHMARKS / script), "--preset", "word-small",
            "--vocab-size", "50", "--threads", "1", *options]
    for item in TINY:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _assert_measured(result: dict, keys: tuple[str, ...]) -> None:
    """Each of ``keys`` is a finite, positive float: measured, and not rounded away to 0."""
    for key in keys:
        assert isinstance(result[key], float), key
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])


@pytest.mark.slow
def test_lm_throughput_counts_matmul_flops_and_reports_consistent_unrounded_figures() -> None:
    # One round: each median is then the round's own ratio, so the ratios can be checked exactly.
    result = _run_benchmark("lm_throughput.py", "--steps", "3", "--rounds", "1", "--warmup", "1",
                            "--gen-tokens", "5", "--baseline")
    # 2 x (two layers of 4H x (input + H), plus the decoder H x V) per token; training = 3x.
    h, v = 16, 50
    forward = 2 * (2 * 4 * h * (h + h) + h * v)
    assert result["forward_flops_per_token"] == forward
    assert result["train_flops_per_token"] == 3 * forward
    assert result["vocab_size"] == v and result["threads"] == 1
    _assert_measured(result, (
        "train_tokens_per_s", "train_flops_per_s", "eval_tokens_per_s", "eval_over_train",
        "plain_train_tokens_per_s", "speedup_over_plain", "generate_tokens_per_s_batch1",
        "generate_tokens_per_s_batch16", "matmul_flops_per_s", "mfu"))
    low, high = result["matmul_flops_per_s_range"]  # the peak read before and after the round
    assert 0 < low <= result["matmul_flops_per_s"] <= high
    assert result["matmul_flops_per_s"] == pytest.approx((low + high) / 2, rel=1e-12)
    exact = 1e-9  # what float arithmetic leaves of an identity
    assert result["train_flops_per_s"] == pytest.approx(
        result["train_flops_per_token"] * result["train_tokens_per_s"], rel=exact)
    # mfu is measured against the higher of the two peak readings around its round.
    assert result["mfu"] == pytest.approx(result["train_flops_per_s"] / high, rel=exact)
    assert result["eval_over_train"] == pytest.approx(
        result["eval_tokens_per_s"] / result["train_tokens_per_s"], rel=exact)
    assert result["speedup_over_plain"] == pytest.approx(
        result["train_tokens_per_s"] / result["plain_train_tokens_per_s"], rel=exact)
    assert result["cpu"]


@pytest.mark.slow
def test_plain_trainer_trains_windows_of_the_stream_and_learns() -> None:
    torch.manual_seed(0)
    config = _config({"model.dropout": "0.0", "train.lr": "0.01"})
    ids = torch.arange(12).repeat(40)  # a cycle: each id predicts the next exactly
    trainer = PlainTrainer(config, 12, ids)
    assert trainer.step() == 4 * 5  # batch x bptt targets
    for _ in range(150):
        trainer.step()
    trainer.model.eval()
    with torch.no_grad():
        stream = ids[:60].view(-1, 1)  # (T, 1)
        logits, _ = trainer.model(stream[:-1], None)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, 12), stream[1:].view(-1))
    assert loss < 0.5  # log(12) = 2.48 for a model that learned nothing


def test_plain_model_drops_out_where_rnnlab_does_for_char_rnn() -> None:
    # char-rnn keeps every input character (input_dropout 0) but drops between and after layers.
    config = resolve_config(preset="char-rnn", overrides={"model.hidden_size": "8"})
    model = PlainTrainer(config, 12, torch.arange(12).repeat(300)).model
    assert (model.drop_in.p, model.rnn.dropout, model.drop_out.p) == \
        config.model.dropout_rates() == (0.0, 0.5, 0.5)


def test_plain_baseline_refuses_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="adaptive"):
        config = _config({"model.output": "adaptive", "model.tie_weights": "false"})
        PlainTrainer(config, 50, torch.arange(500) % 50)


@pytest.mark.slow
def test_mfu_ceiling_runs_and_counts_a_step_as_lm_throughput_does() -> None:
    # One round: each median is then the round's own figure, so the ratios can be checked exactly.
    result = _run_benchmark("mfu_ceiling.py", "--steps", "2", "--rounds", "1", "--warmup", "1")
    h, v = 16, 50
    flops = 3 * 2 * (2 * 4 * h * (h + h) + h * v) * 4 * 5
    assert result["train_flops_per_step"] == flops
    _assert_measured(result, ("recurrent_s", "output_matmuls_s", "train_step_s", "ceiling_mfu",
                              "mfu", "share_of_ceiling"))
    low, high = result["matmul_flops_per_s_range"]
    assert 0 < low <= high
    exact = 1e-9
    assert result["mfu"] == pytest.approx(flops / result["train_step_s"] / high, rel=exact)
    assert result["ceiling_mfu"] == pytest.approx(
        flops / (result["recurrent_s"] + result["output_matmuls_s"]) / high, rel=exact)
    assert result["share_of_ceiling"] == pytest.approx(
        result["mfu"] / result["ceiling_mfu"], rel=exact)


def test_mfu_ceiling_summary_compares_each_round_with_the_peaks_around_it() -> None:
    flops = 100.0
    # (recurrent, output, step) seconds per round; peaks read before, between and after.
    rounds = [(0.5, 0.5, 2.0), (0.25, 0.25, 1.0), (0.5, 1.5, 4.0)]
    peaks = [100.0, 50.0, 200.0, 10.0]
    result = summary(rounds, peaks, flops)
    # Peaks around the rounds: 100, 200, 200. Ceilings: 1.0, 1.0, 0.25; mfus: 0.5, 0.5, 0.125.
    assert result["ceiling_mfu"] == 1.0
    assert result["mfu"] == 0.5
    assert result["share_of_ceiling"] == 0.5
    assert (result["recurrent_s"], result["output_matmuls_s"], result["train_step_s"]) == (
        0.5, 0.5, 2.0)


def test_mfu_ceiling_summary_keeps_times_far_below_a_millisecond() -> None:
    # A fast machine's output matmuls: their seconds and the ratios must survive unrounded.
    rounds = [(3e-6, 4e-8, 1e-5)]
    result = summary(rounds, [1e9, 2e9], 1000.0)
    assert (result["recurrent_s"], result["output_matmuls_s"], result["train_step_s"]) == (
        3e-6, 4e-8, 1e-5)
    assert result["mfu"] == pytest.approx(1000.0 / 1e-5 / 2e9, rel=1e-12)
    assert result["ceiling_mfu"] == pytest.approx(1000.0 / (3e-6 + 4e-8) / 2e9, rel=1e-12)
    assert result["share_of_ceiling"] == pytest.approx(
        result["mfu"] / result["ceiling_mfu"], rel=1e-12)


@pytest.mark.slow
def test_mfu_ceiling_refuses_an_adaptive_softmax() -> None:
    args = [sys.executable, str(BENCHMARKS / "mfu_ceiling.py"), "--preset", "word-fast"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "full softmax" in done.stderr.strip().splitlines()[-1]
