"""``benchmarks/lm_throughput.py`` runs and counts FLOPs as the issue defines them; the plain
PyTorch yardstick it can time trains the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnlab.config import resolve_config

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


def test_lm_throughput_prints_its_figures_with_the_issue_flop_count() -> None:
    result = _run_benchmark("lm_throughput.py", "--steps", "4", "--rounds", "2", "--warmup", "1",
                            "--gen-tokens", "5", "--baseline")
    # 2 x (two layers of 4H x (input + H), plus the decoder H x V) per token; training = 3x.
    h, v = 16, 50
    forward = 2 * (2 * 4 * h * (h + h) + h * v)
    assert result["forward_flops_per_token"] == forward
    assert result["train_flops_per_token"] == 3 * forward
    assert result["vocab_size"] == v and result["threads"] == 1
    for key in ("train_tokens_per_s", "eval_tokens_per_s", "plain_train_tokens_per_s",
                "generate_tokens_per_s_batch1", "matmul_flops_per_s", "mfu",
                "speedup_over_plain"):
        assert result[key] > 0, key
    assert result["mfu"] == pytest.approx(
        result["train_flops_per_s"] / result["matmul_flops_per_s"], rel=1.0)
    assert result["cpu"]


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


def test_plain_baseline_refuses_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="adaptive"):
        config = _config({"model.output": "adaptive", "model.tie_weights": "false"})
        PlainTrainer(config, 50, torch.arange(500) % 50)


def test_mfu_ceiling_runs_and_counts_a_step_as_lm_throughput_does() -> None:
    result = _run_benchmark("mfu_ceiling.py", "--steps", "2", "--rounds", "2", "--warmup", "1")
    h, v = 16, 50
    assert result["train_flops_per_step"] == 3 * 2 * (2 * 4 * h * (h + h) + h * v) * 4 * 5
    for key in ("recurrent_ms", "output_matmuls_ms", "train_step_ms", "ceiling_mfu", "mfu",
                "share_of_ceiling"):
        assert result[key] > 0, key


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
    assert (result["recurrent_ms"], result["output_matmuls_ms"], result["train_step_ms"]) == (
        500.0, 500.0, 2000.0)


def test_mfu_ceiling_refuses_an_adaptive_softmax() -> None:
    args = [sys.executable, str(BENCHMARKS / "mfu_ceiling.py"), "--preset", "word-fast"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "full softmax" in done.stderr.strip().splitlines()[-1]
