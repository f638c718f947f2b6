"""Data-parallel training: torchrun with 2 CPU processes (gloo) equals one process.

The end-to-end test launches ``python -m torch.distributed.run --nproc_per_node=2 -m rnnlab
train`` on 127.0.0.1, then checks the run against a one-process run of the same global batch:
the weights and carried hidden state agree to float rounding, rank 0 alone wrote the run
directory, and one process resumes the two-process run as if it had never been split.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import rnnlab
from cli_harness import free_port, torchrun
from rnnlab import checkpoint as ckpt
from rnnlab import distributed
from rnnlab.errors import RnnlabError
from rnnlab.runtime import autocast_dtype, cpu_has_native_bf16
from rnnlab.training import runner
from rnnlab.training.callbacks import PlotCurves
from rnnlab.training.trainer import Trainer

STEPS = 6  # the first leg; resuming runs to 2 * STEPS
EVAL_EVERY = 3
# No dropout (each rank would draw its own masks); an adaptive softmax so that some parameters
# go unused on some steps, the case where DDP must look for them.
SETTINGS: dict[str, Any] = {
    "data.corpus": "synthetic", "data.synthetic_tokens": 20_000, "data.batch_size": 8,
    "data.bptt": 10, "data.eval_batch_size": 4,
    "model.cell": "lstm", "model.embedding_dim": 16, "model.hidden_size": 32,
    "model.num_layers": 1, "model.dropout": 0.0, "model.tie_weights": False,
    "model.output": "adaptive", "model.cutoffs": "20,100",
    "train.lr": 3e-3, "train.schedule": "constant", "train.warmup_steps": 0, "train.epochs": 1,
    "train.eval_every": EVAL_EVERY, "train.log_every": 2, "train.device": "cpu",
    "train.threads": 1, "train.seed": 7,
}


# Runs in this process use one thread (train.threads = 1); the fixture restores the count.
pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / f"last-{step:08d}.safetensors")


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def _hidden(run_dir: Path) -> list[torch.Tensor]:
    return ckpt.load_trainer_state(run_dir / ckpt.TRAINER)["task"]["hidden"]


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_one_process_resumes(tmp_path: Path) -> None:
    # The reference: one process, global batch 8, STEPS steps, then resumed to 2 * STEPS.
    config = rnnlab.resolve_config(preset="synthetic",
                                   overrides={**SETTINGS, "train.max_steps": STEPS})
    rnnlab.train(config, tmp_path / "one")
    first_leg = _weights(tmp_path / "one", STEPS)
    first_hidden = _hidden(tmp_path / "one")
    rnnlab.resume(tmp_path / "one", {"train.max_steps": 2 * STEPS})

    # (a) two ranks with 4 rows each follow the one-process run.
    sets = [f"--set={key}={value}" for key, value in SETTINGS.items()]
    done = torchrun(["train", "--out", str(tmp_path / "two"), "--samples", "0", *sets,
                     f"--max-steps={STEPS}"])
    _assert_close(_weights(tmp_path / "two", STEPS), first_leg)
    for mine, reference in zip(_hidden(tmp_path / "two"), first_hidden, strict=True):
        assert mine.shape == reference.shape == (1, 8, 32)  # gathered: the whole global batch
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-5)

    # (b) rank 0 alone wrote and printed.
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    expected = [ckpt.CONFIG, ckpt.VOCAB, ckpt.BEST, ckpt.TRAINER, ckpt.METRICS,
                ckpt.TRAIN_LOG, ckpt.RUN_INFO, f"last-{STEPS:08d}.safetensors"]
    if importlib.util.find_spec("matplotlib") is not None:
        expected.append(PlotCurves.NAME)  # drawn at the end, by rank 0 alone
    assert names == sorted(expected)
    metrics = ckpt.read_metrics(tmp_path / "two")
    assert [r["step"] for r in metrics] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    reference_metrics = ckpt.read_metrics(tmp_path / "one")[: len(metrics)]
    for mine, reference in zip(metrics, reference_metrics, strict=True):
        assert mine["loss"] == pytest.approx(reference["loss"], abs=1e-5)
        assert mine["best"] == reference["best"]
    log = ckpt.read_metrics(tmp_path / "two", ckpt.TRAIN_LOG)
    assert [r["step"] for r in log] == list(range(2, STEPS + 1, 2))
    assert json.loads((tmp_path / "two" / ckpt.RUN_INFO).read_text())["processes"] == 2
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    assert sum(line.startswith("run directory:") for line in lines) == 1
    assert sum(line.startswith("run: ") for line in lines) == 1

    # (c) one process resumes the two-process run exactly where the pair would have gone.
    rnnlab.resume(tmp_path / "two", {"train.max_steps": 2 * STEPS})
    _assert_close(_weights(tmp_path / "two", 2 * STEPS), _weights(tmp_path / "one", 2 * STEPS))


# --- the pieces, in one process ----------------------------------------------------------------


def test_one_process_helpers_are_identities() -> None:
    assert not distributed.is_distributed()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    x = torch.arange(6.0).view(1, 6, 1)
    assert distributed.all_reduce_sum(x.clone()).equal(x)
    assert distributed.gather_rows(x, dim=1).equal(x)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


def test_row_slices_cover_every_row_once() -> None:
    for total in (1, 5, 8, 13):
        for world in (1, 2, 3, 8):
            rows = [i for r in range(world)
                    for i in range(total)[distributed.row_slice(total, r, world)]]
            assert rows == list(range(total))
    assert distributed.row_slice(8, 1, 2) == slice(4, 8)
    with pytest.raises(RnnlabError, match="multiple of 3"):
        distributed.equal_rows(8, 0, 3, "data.batch_size")


@dataclass
class _Batch:
    tokens: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B,)


@pytest.mark.parametrize("total, world", [(8, 2), (5, 2), (7, 3), (3, 4)])
def test_weighted_shares_average_to_the_full_batch_mean(total: int, world: int) -> None:
    values = torch.randn(total, dtype=torch.float64)
    batch = _Batch(torch.arange(total * 2).view(total, 2), values)
    average = 0.0
    for r in range(world):
        local, weight = distributed.local_batch(batch, r, world)
        assert local.tokens.shape[0] == local.labels.shape[0] >= 1
        average += weight * float(local.labels.mean()) / world  # what DDP's averaging computes
    assert average == pytest.approx(float(values.mean()), abs=1e-12)


def test_batch_without_one_row_count_is_refused() -> None:
    with pytest.raises(RnnlabError, match="shard"):
        distributed.local_batch((torch.zeros(4, 3), torch.zeros(5)), 0, 2)


def test_language_model_task_takes_its_rows(tmp_path: Path) -> None:
    config = rnnlab.resolve_config(preset="synthetic", overrides=SETTINGS)
    task = runner.build_lm_task(config, torch.device("cpu"))
    full = task.streams.clone()
    with pytest.raises(RnnlabError, match="data.batch_size = 8"):
        task.shard(0, 3)
    task.shard(1, 2)
    assert task.streams.equal(full[4:8])
    # A checkpoint holds the whole batch's state; each rank keeps its rows on resume.
    hidden = [torch.arange(8.0).view(1, 8, 1).expand(1, 8, 32), torch.zeros(1, 8, 32)]
    task.load_state_dict({"hidden": hidden})
    assert task.state[0][0, :, 0].tolist() == [4.0, 5.0, 6.0, 7.0]


# --- precision ---------------------------------------------------------------------------------


def test_precision_on_this_cpu() -> None:
    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert autocast_dtype("fp32", cpu) is None
    with pytest.warns(UserWarning, match="fp16 is supported on CUDA"):
        assert autocast_dtype("fp16", cpu) is None
    if cpu_has_native_bf16():
        assert autocast_dtype("bf16", cpu) == torch.bfloat16
    else:
        with pytest.warns(UserWarning, match="no native bf16"):
            assert autocast_dtype("bf16", cpu) is None


def test_bf16_request_on_a_cpu_without_it_trains_in_fp32(tmp_path: Path) -> None:
    if cpu_has_native_bf16():
        pytest.skip("this CPU has native bf16")
    overrides = {**SETTINGS, "train.max_steps": 2, "train.precision": "bf16"}
    with pytest.warns(UserWarning, match="training in fp32"):
        result = rnnlab.train(rnnlab.resolve_config(preset="synthetic", overrides=overrides),
                              tmp_path / "bf16")
    assert result.steps == 2



def test_gradient_scaler_skips_overflowing_steps_without_failing(tmp_path: Path) -> None:
    """The fp16 path (a GradScaler) on the CPU: GPU runs are rare, this logic is not GPU-bound."""
    config = rnnlab.resolve_config(preset="synthetic",
                                   overrides={**SETTINGS, "train.max_steps": 8})
    task = runner.build_lm_task(config, torch.device("cpu"))
    (tmp_path / "run").mkdir()
    trainer = Trainer(task, config, tmp_path / "run", torch.device("cpu"))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    calls = {"n": 0}

    def overflow_six_times(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad * float("inf") if calls["n"] <= 6 else grad

    task.model.rnn.weight_hh_l0.register_hook(overflow_six_times)
    result = trainer.fit()  # 6 inf-gradient steps in a row: not MAX_BAD_STEPS failures
    assert result.steps == 8 and trainer.bad_steps == 0
    assert trainer.scaler.get_scale() == 1024.0 / 2**6  # halved once per overflow
    adam_steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert adam_steps == {2.0}  # only the two finite steps moved the weights
    saved = ckpt.load_trainer_state(tmp_path / "run" / ckpt.TRAINER)
    assert saved["scaler"]["scale"] == 1024.0 / 2**6


# --- agreement between ranks that do not share a disk -----------------------------------------

# Each child joins a 2-rank gloo group as torchrun would have it (the environment says who it
# is), runs BODY, and prints one OUTCOME line; the test bounds the whole with a timeout.
_RANK_SCRIPT = """
import os, sys
from pathlib import Path
import torch
from torch import nn
from rnnlab import distributed
from rnnlab.config import RunConfig
from rnnlab.errors import RnnlabError
from rnnlab.training.trainer import Trainer, _RolledBack

class Task:
    best_metric, higher_is_better, unit = "loss", False, "items"
    def __init__(self):
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
    def steps_per_epoch(self):
        return 10
    def batches(self, epoch, start=0):
        for i in range(start, 10):
            yield torch.full((4, 3), float(i))
    def train_loss(self, batch):
        return (self.model(batch) - 1.0).pow(2).mean(), batch.shape[0]
    def evaluate(self, split):
        return {"loss": 1.0}
    def state_dict(self):
        return {}
    def load_state_dict(self, state):
        pass
    def shard(self, rank, world):
        return False  # the trainer slices every batch

root = Path(sys.argv[1])
outcome = "none"
try:
    with distributed.session("cpu") as device:
BODY
except RnnlabError as exc:
    outcome = f"error: {exc}"
print("OUTCOME", distributed.rank() if distributed.is_distributed() else os.environ["RANK"],
      outcome, flush=True)
"""

_ROLL_BACK = """
        # No shared disk: each rank has its own run directory and rank 0 alone writes files.
        run_dir = root / f"rank{distributed.rank()}"
        run_dir.mkdir()
        config = RunConfig()
        config.train.optimizer, config.train.lr, config.train.schedule = "adam", 0.01, "constant"
        config.validate()
        trainer = Trainer(Task(), config, run_dir, device)
        batches = list(Task().batches(0))
        trainer.train_step(batches[0])
        trainer._save_last()  # the checkpoint of step 1, on rank 0's disk only
        if os.environ.get("STALE_ON_RANK1") and distributed.rank() == 0:
            (run_dir / "trainer.pt").unlink()  # rank 0 sees no checkpoint...
        elif os.environ.get("STALE_ON_RANK1"):
            (run_dir / "trainer.pt").write_bytes(b"stale")  # ...rank 1 a stale one
        trainer.train_step(batches[1])
        try:
            trainer._roll_back("a test fault")
        except _RolledBack:
            weights = [round(float(p.sum()), 6) for p in trainer.model.parameters()]
            outcome = f"rolled back to step {trainer.step} scale {trainer.lr_scale} {weights}"
"""

_MAIN_FIRST_FAILS = """
        with distributed.main_first():
            if distributed.rank() == 0:
                raise RnnlabError("the corpus could not be downloaded")
        outcome = "went on"
"""


def _run_ranks(body: str, root: Path, env: dict[str, str] | None = None) -> dict[int, str]:
    """Two ranks of ``body`` on 127.0.0.1; each rank's OUTCOME line. Fails if they hang."""
    script = _RANK_SCRIPT.replace("BODY\n", body.lstrip("\n"))
    port = str(free_port())
    procs = []
    for r in range(2):
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(r), "LOCAL_RANK": "0",
                     "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": port, **(env or {})}
        if sys.platform.startswith("linux"):
            child_env["GLOO_SOCKET_IFNAME"] = "lo"
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(root)], env=child_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung instead of agreeing")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcomes = {}
    for out in outputs:
        line = next((x for x in out.splitlines() if x.startswith("OUTCOME ")), None)
        assert line is not None, out[-3000:]
        _, rank, outcome = line.split(" ", 2)
        outcomes[int(rank)] = outcome
    return outcomes


@pytest.mark.slow
def test_roll_back_is_decided_on_rank_0_when_only_it_sees_the_checkpoint(tmp_path: Path) -> None:
    outcomes = _run_ranks(_ROLL_BACK, tmp_path)
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0].startswith("rolled back to step 1 scale 0.5"), outcomes


@pytest.mark.slow
def test_no_roll_back_on_any_rank_when_rank_0_has_no_checkpoint(tmp_path: Path) -> None:
    outcomes = _run_ranks(_ROLL_BACK, tmp_path, {"STALE_ON_RANK1": "1"})
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0].startswith("error: a test fault before any checkpoint was written")


@pytest.mark.slow
def test_a_failure_inside_main_first_reaches_every_rank_as_an_error(tmp_path: Path) -> None:
    outcomes = _run_ranks(_MAIN_FIRST_FAILS, tmp_path)
    assert outcomes == {0: "error: the corpus could not be downloaded",
                        1: "error: the corpus could not be downloaded"}
