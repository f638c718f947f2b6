"""CUDA paths: cuDNN against the CPU, mixed-precision training steps, DDP over nccl.

Every test here needs a CUDA device and is skipped without one (``pytest -m gpu`` selects them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import rnnlab
from cli_harness import torchrun
from rnnlab import checkpoint as ckpt
from rnnlab.config import ModelConfig
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.runtime import autocast_dtype
from rnnlab.training.trainer import TrainResult

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SETTINGS: dict[str, Any] = {
    "data.corpus": "synthetic", "data.synthetic_tokens": 20_000, "data.batch_size": 8,
    "data.bptt": 10, "data.eval_batch_size": 4,
    "model.embedding_dim": 16, "model.hidden_size": 32, "model.num_layers": 2,
    "model.dropout": 0.0, "model.tie_weights": False,
    "train.lr": 3e-3, "train.schedule": "constant", "train.warmup_steps": 0, "train.epochs": 1,
    "train.eval_every": 4, "train.device": "cuda", "train.seed": 7,
}


@pytest.fixture
def exact_fp32():
    """Plain fp32 on the GPU (no TF32), so that it can be held to the CPU's numbers."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_cudnn_logits_match_the_cpu(cell: str, exact_fp32) -> None:
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, embedding_dim=24, hidden_size=48, num_layers=2, dropout=0.0,
                         tie_weights=False)
    model = RNNLanguageModel(config, vocab_size=100).eval()
    tokens = torch.randint(0, 100, (4, 30))
    targets = torch.randint(0, 100, (4, 30))
    with torch.no_grad():
        cpu_logits, cpu_state = model(tokens)
        cpu_nll, _ = model.nll(tokens, targets)
        gpu = model.to("cuda")
        gpu_logits, gpu_state = gpu(tokens.cuda())
        gpu_nll, _ = gpu.nll(tokens.cuda(), targets.cuda())
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, rtol=1e-4, atol=1e-4)
    first = gpu_state[0] if isinstance(gpu_state, tuple) else gpu_state
    expected = cpu_state[0] if isinstance(cpu_state, tuple) else cpu_state
    torch.testing.assert_close(first.cpu(), expected, rtol=1e-4, atol=1e-4)
    assert float(gpu_nll) == pytest.approx(float(cpu_nll), abs=1e-4)


def _train(tmp_path: Path, name: str, **extra: Any) -> TrainResult:
    config = rnnlab.resolve_config(preset="synthetic", overrides={**SETTINGS, **extra})
    return rnnlab.train(config, tmp_path / name)


def test_bf16_autocast_training_steps_are_finite(tmp_path: Path) -> None:
    if autocast_dtype("bf16", torch.device("cuda"), warn=False) != torch.bfloat16:
        pytest.skip("this GPU has no native bf16")
    result = _train(tmp_path, "bf16", **{"train.precision": "bf16", "train.max_steps": 8})
    assert result.steps == 8
    records = ckpt.read_metrics(result.run_dir)
    assert records and all(math.isfinite(r["loss"]) and math.isfinite(r["train_loss"])
                           for r in records)
    assert records[-1]["loss"] < records[0]["loss"] + 0.5  # it trains, it does not blow up


def test_fp16_with_a_gradient_scaler_trains_and_resumes(tmp_path: Path) -> None:
    result = _train(tmp_path, "fp16", **{"train.precision": "fp16", "train.max_steps": 6})
    assert result.steps == 6
    assert all(math.isfinite(r["loss"]) for r in ckpt.read_metrics(result.run_dir))
    state = ckpt.load_trainer_state(result.run_dir / ckpt.TRAINER)
    assert state["scaler"]["scale"] > 0  # the scaler's calibration is part of the checkpoint
    resumed = rnnlab.resume(result.run_dir, {"train.max_steps": 10})
    assert resumed.steps == 10


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_with_nccl_equal_one_gpu(tmp_path: Path, exact_fp32) -> None:
    _train(tmp_path, "one", **{"train.max_steps": 6})
    # TF32 off in the workers too, so one GPU and two agree to fp32 rounding.
    torchrun(["train", "--out", str(tmp_path / "two"), "--samples", "0", "--max-steps", "6",
              *(f"--set={key}={value}" for key, value in SETTINGS.items())],
             env={"NVIDIA_TF32_OVERRIDE": "0"})
    one = load_file(tmp_path / "one" / "last-00000006.safetensors")
    two = load_file(tmp_path / "two" / "last-00000006.safetensors")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-4, msg=name)
