"""Crashes and signals: a run directory must always hold a loadable, resumable state.

Training processes are SIGKILLed at random moments (checkpoints are written every step, so many
kills land inside a write) and at exact points of a checkpoint (inside ``os.replace``, between
the weights and ``trainer.pt``, in the middle of a metrics line). After every crash the run must
load, and resuming it to the end must give exactly the run that was never killed.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import rnnlab
from cli_harness import CliRunner, shared_runner, wait_for
from rnnlab import checkpoint as ckpt
from rnnlab.api import LanguageModel
from rnnlab.data.vocab import Vocab

TIMING = {"elapsed", "eval_seconds"}

# 2 epochs of ~50 variable-length windows; a checkpoint after every step, so that kills at
# random moments often land inside one; dropout and variable BPTT make the RNG part of the state.
OVERRIDES: dict[str, Any] = {
    "data.corpus": "synthetic", "data.synthetic_tokens": 4_000, "data.batch_size": 8,
    "data.bptt": 10, "data.eval_batch_size": 8, "data.variable_bptt": True,
    "model.embedding_dim": 16, "model.hidden_size": 16, "model.num_layers": 1,
    "model.dropout": 0.1, "model.tie_weights": True, "train.epochs": 2, "train.eval_every": 20,
    "train.checkpoint_every": 1, "train.log_every": 3, "train.device": "cpu",
    "train.threads": 1, "train.seed": 3,
}


def set_args(overrides: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in overrides.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--set", f"{key}={text}"]
    return args


TRAIN_ARGS = ["train", "--preset", "synthetic", *set_args(OVERRIDES), "--samples", "0",
              "--no-plot"]
# Finishing a crashed run: checkpoints between evaluations change no number of the run (they
# only read its state), and skipping them saves ~100 fsynced writes per test.
FINISH_ARGS = ["train", "--resume", "run", "--samples", "0", "--no-plot", "--set",
               "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def cli() -> CliRunner:
    return shared_runner()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run as it goes when nothing happens to it."""
    config = rnnlab.resolve_config(preset="synthetic",
                                   overrides={**OVERRIDES, "train.checkpoint_every": 0})
    return rnnlab.train(config, tmp_path_factory.mktemp("reference") / "run").run_dir


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("_per_s")}
            for r in records]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == [], f"{a.name} differs"


def assert_equals_reference(run: Path, reference: Path) -> None:
    last = ckpt.load_trainer_state(run / ckpt.TRAINER)["weights"]
    assert last == ckpt.load_trainer_state(reference / ckpt.TRAINER)["weights"]
    assert_same_weights(run / last, reference / last)
    assert_same_weights(run / ckpt.BEST, reference / ckpt.BEST)
    assert comparable(ckpt.read_metrics(run)) == comparable(ckpt.read_metrics(reference))
    assert comparable(ckpt.read_metrics(run, ckpt.TRAIN_LOG)) == comparable(
        ckpt.read_metrics(reference, ckpt.TRAIN_LOG))
    assert run_files(run) == run_files(reference)


def run_files(run: Path) -> list[str]:
    # Weights, state and logs (curves.png and run.json legitimately differ, or may be absent).
    return sorted(p.name for p in run.iterdir()
                  if p.suffix in (".safetensors", ".pt", ".jsonl") or p.name.startswith("."))


def assert_loadable(run: Path) -> int:
    """Everything a user or a resume reads from ``run`` loads; returns the checkpoint's step."""
    config = ckpt.load_config(run)
    assert config.train.seed == OVERRIDES["train.seed"]
    Vocab.load(run / ckpt.VOCAB)
    state = ckpt.load_trainer_state(run / ckpt.TRAINER)
    assert (run / state["weights"]).exists(), f"trainer.pt names a missing {state['weights']}"
    last = LanguageModel.load(run, weights="last")
    assert all(bool(torch.isfinite(p).all()) for p in last.model.parameters())
    if (run / ckpt.BEST).exists():
        LanguageModel.load(run)
    ckpt.read_metrics(run)  # a torn last line is tolerated, nothing else may be broken
    return int(state["step"])


def committed(run: Path, after: int | None) -> bool:
    """A checkpoint newer than the one whose mtime was ``after`` has been committed."""
    try:
        return (run / ckpt.TRAINER).stat().st_mtime_ns != after
    except FileNotFoundError:
        return False


def mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def test_sigkill_at_random_moments_never_leaves_a_broken_run(
        cli: CliRunner, reference: Path, tmp_path: Path) -> None:
    rng = random.Random(20240601)  # fixed: a failure can be replayed
    run = tmp_path / "run"
    steps: list[int] = []
    for attempt in range(5):
        args = TRAIN_ARGS + ["--out", "run"] if attempt == 0 else [
            "train", "--resume", "run", "--samples", "0", "--no-plot"]
        before = mtime(run / ckpt.TRAINER)
        child = cli.start(args, tmp_path)
        # Kill a few milliseconds after a checkpoint is committed: with one checkpoint per step
        # the process is then inside a step or inside the next checkpoint's writes.
        wait_for(lambda before=before: committed(run, before), child, "a new checkpoint")
        time.sleep(rng.uniform(0.0, 0.03))
        child.send_signal(signal.SIGKILL)
        result = child.wait()
        if result.returncode == 0:  # it finished first: nothing more to kill
            break
        assert result.returncode == -signal.SIGKILL, result.stderr
        steps.append(assert_loadable(run))
    assert len(steps) >= 3 and steps == sorted(steps), steps
    final = cli.run(FINISH_ARGS, tmp_path)
    assert final.returncode == 0, final.stderr
    assert not list(run.glob(".*.tmp")), "the resume should remove what crashes left behind"
    assert not (run / "curves.png").exists()  # --no-plot
    assert_equals_reference(run, reference)


# Python run in the child before the CLI: SIGKILL the process at an exact point of the Nth
# checkpoint. os.replace is where a fully written temporary file becomes the real one.
_KILL = "import os, signal\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
CRASH_POINTS: dict[str, str] = {
    # The new weights are complete in a temporary file that was never renamed.
    "weights-written-not-renamed": _KILL + """
real, calls = os.replace, [0]
def replace(src, dst, *a, **k):
    if os.path.basename(str(dst)).startswith("last-"):
        calls[0] += 1
        if calls[0] == 4:
            die()
    return real(src, dst, *a, **k)
os.replace = replace
""",
    # The new weights are in place, trainer.pt (the commit point) still names the old ones.
    "trainer-written-not-renamed": _KILL + """
real, calls = os.replace, [0]
def replace(src, dst, *a, **k):
    if os.path.basename(str(dst)) == "trainer.pt":
        calls[0] += 1
        if calls[0] == 4:
            die()
    return real(src, dst, *a, **k)
os.replace = replace
""",
    # Committed, but the previous weights file was not deleted yet.
    "old-weights-not-deleted": _KILL + """
import pathlib
real, calls = pathlib.Path.unlink, [0]
def unlink(self, *a, **k):
    if self.name.startswith("last-"):
        calls[0] += 1
        if calls[0] == 4:
            die()
    return real(self, *a, **k)
pathlib.Path.unlink = unlink
""",
    # The best weights are half written (a torn temporary file).
    "best-weights-half-written": _KILL + """
real, calls = os.fsync, [0]
def fsync(fd):  # the written temporary file is torn before it reaches the disk
    if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".model.safetensors."):
        calls[0] += 1
        if calls[0] == 2:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            die()
    return real(fd)
os.fsync = fsync
""",
    # The process dies in the middle of a metrics.jsonl line, after the step's weights.
    "metrics-line-torn": _KILL + """
import json
import rnnlab.checkpoint as ckpt
real, calls = ckpt.append_metrics, [0]
def append_metrics(run_dir, record, name=ckpt.METRICS):
    if name == ckpt.METRICS:
        calls[0] += 1
        if calls[0] == 3:
            line = json.dumps(record)
            with open(os.path.join(str(run_dir), name), "a") as handle:
                handle.write(line[: len(line) // 2])
            die()
    return real(run_dir, record, name)
ckpt.append_metrics = append_metrics
""",
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_sigkill_at_each_point_of_a_checkpoint_then_resume_is_exact(
        cli: CliRunner, reference: Path, tmp_path: Path, point: str) -> None:
    crashed = cli.run(TRAIN_ARGS + ["--out", "run"], tmp_path, hook=CRASH_POINTS[point])
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    run = tmp_path / "run"
    assert_loadable(run)
    if point in ("weights-written-not-renamed", "trainer-written-not-renamed",
                 "best-weights-half-written"):
        assert list(run.glob(".*.tmp")), "the crash should have left a temporary file"
    if point == "metrics-line-torn":
        assert not (run / ckpt.METRICS).read_text(encoding="utf-8").endswith("\n")
    resumed = cli.run(FINISH_ARGS, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run.glob(".*.tmp"))
    assert_equals_reference(run, reference)


def test_sigterm_saves_and_says_how_to_resume(cli: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    child = cli.start(TRAIN_ARGS + ["--out", "run"], tmp_path)
    wait_for(lambda: (run / ckpt.TRAINER).exists(), child, "the first checkpoint")
    child.send_signal(signal.SIGTERM)
    result = child.wait()
    assert result.returncode == 130, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rnnlab train --resume run" in lines[0], result.stderr
    state = ckpt.load_trainer_state(run / ckpt.TRAINER)
    assert f"interrupted at step {state['step']};" in lines[0]  # it saved where it stopped
    assert_loadable(run)


def test_a_second_ctrl_c_stops_at_once_and_leaves_a_loadable_run(
        cli: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    child = cli.start(TRAIN_ARGS + ["--out", "run"], tmp_path)
    wait_for(lambda: (run / ckpt.TRAINER).exists(), child, "the first checkpoint")
    child.send_signal(signal.SIGINT)
    child.send_signal(signal.SIGINT)  # impatient: may land inside the final checkpoint's write
    result = child.wait()
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "rnnlab train --resume run" in result.stderr
    assert_loadable(run)
    resumed = cli.run(FINISH_ARGS, tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_resume_removes_leftover_temporary_files_and_stale_weights(tmp_path: Path) -> None:
    config = rnnlab.resolve_config(preset="synthetic",
                                   overrides={**OVERRIDES, "train.max_steps": 12})
    run = rnnlab.train(config, tmp_path / "run").run_dir
    debris = [run / ".model.safetensors.k2j3.tmp", run / ".trainer.pt.x81q.tmp",
              run / ".last-00000013.safetensors.a1b2.tmp", run / ".metrics.jsonl.zz.tmp"]
    for path in debris:
        path.write_bytes(b"half a file")
    # Loading ignores them...
    assert_loadable(run)
    # ...and a resume cleans them up and carries on.
    result = rnnlab.resume(run, {"train.max_steps": 15})
    assert result.steps == 15
    assert not [p for p in debris if p.exists()]
    assert sorted(p.name for p in run.glob("last-*")) == ["last-00000015.safetensors"]


def test_metrics_after_a_torn_line_stay_readable(tmp_path: Path) -> None:
    ckpt.append_metrics(tmp_path, {"step": 1, "loss": 2.0})
    with open(tmp_path / ckpt.METRICS, "a", encoding="utf-8") as handle:
        handle.write('{"step": 2, "lo')  # a crash in the middle of a line
    ckpt.append_metrics(tmp_path, {"step": 3, "loss": 1.0})
    assert ckpt.read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 3, "loss": 1.0}]
    ckpt.truncate_log(tmp_path, 2)
    assert (tmp_path / ckpt.METRICS).read_text() == json.dumps({"step": 1, "loss": 2.0}) + "\n"
    assert math.isfinite(ckpt.read_metrics(tmp_path)[0]["loss"])
