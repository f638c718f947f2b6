"""Crashes: a run directory must always hold a loadable, resumable state.

Training processes are SIGKILLed at exact, chosen moments, by Python run in the child that
counts calls (so a kill lands at the same point on any machine): inside a training step, inside
``os.replace``, between the weights and ``trainer.pt``, in the middle of a metrics line. After
every crash the run must load, and resuming it to the end must give exactly the run that was
never killed.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import rnnlab
from cli_harness import CliRunner
from rnnlab import checkpoint as ckpt
from run_states import FINISH_ARGS, OVERRIDES, TRAIN_ARGS, assert_loadable

TIMING = {"elapsed", "eval_seconds"}


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


# Python run in the child before the CLI: it SIGKILLs the process at an exact point.
_KILL = "import os, signal\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"


def kill_at(owner: str, attr: str, n: int, *, after: bool = False, when: str = "True") -> str:
    """Hook source that SIGKILLs the child at the ``n``th call of ``owner.attr`` whose arguments
    ``a`` satisfy the expression ``when``, just before the call runs or (``after``) just after."""
    return _KILL + f"""
import os, pathlib, torch.autograd
real, calls = {owner}.{attr}, [0]
def counted(*a, **k):
    hit = False
    if {when}:
        calls[0] += 1
        hit = calls[0] == {n}
    if hit and not {after}:
        die()
    result = real(*a, **k)
    if hit:
        die()
    return result
{owner}.{attr} = counted
"""


def _named(prefix: str, arg: int = 1) -> str:
    """A ``when`` for ``kill_at``: the call's argument ``arg`` is a path whose name starts so."""
    return f"os.path.basename(str(a[{arg}])).startswith({prefix!r})"


# One process after another on the same run, each resuming the previous one's crash and killed
# at a different, exact moment (calls are counted from the process's start, so every kill lands
# at the same point on any machine); each one commits a few checkpoints before it dies.
KILLS: list[tuple[str, str]] = [
    ("inside a training step: gradients computed, the weights not yet updated",
     kill_at("torch.autograd", "backward", 8, after=True)),
    ("new last weights written and fsynced, not yet renamed",
     kill_at("os", "replace", 3, when=_named("last-"))),
    ("new best weights written at an evaluation, not yet renamed",
     kill_at("os", "replace", 1, when=_named("model.safetensors"))),
    ("trainer.pt renamed (the checkpoint committed), its folder not yet fsynced",
     kill_at("os", "replace", 4, after=True, when=_named("trainer.pt"))),
    ("committed, the previous weights not yet deleted",
     kill_at("pathlib.Path", "unlink", 2, when=_named("last-", 0))),
]


@pytest.mark.slow
def test_sigkill_at_chosen_moments_in_turn_never_leaves_a_broken_run(
        cli_runner: CliRunner, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    steps: list[int] = []
    for attempt, (moment, hook) in enumerate(KILLS):
        args = TRAIN_ARGS + ["--out", "run"] if attempt == 0 else [
            "train", "--resume", "run", "--samples", "0", "--no-plot"]
        crashed = cli_runner.run(args, tmp_path, hook=hook)
        assert crashed.returncode == -signal.SIGKILL, f"not killed {moment}:\n{crashed.stderr}"
        steps.append(assert_loadable(run))
    # Every process got further than the one before it: each kill hit a different moment.
    assert steps == sorted(set(steps)) and steps[0] > 0, steps
    final = cli_runner.run(FINISH_ARGS, tmp_path)
    assert final.returncode == 0, final.stderr
    assert not list(run.glob(".*.tmp")), "the resume should remove what crashes left behind"
    assert not (run / "curves.png").exists()  # --no-plot
    assert_equals_reference(run, reference)


# Python run in the child before the CLI: SIGKILL the process at an exact point of the Nth
# checkpoint. os.replace is where a fully written temporary file becomes the real one.
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


@pytest.mark.slow
@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_sigkill_at_each_point_of_a_checkpoint_then_resume_is_exact(
        cli_runner: CliRunner, reference: Path, tmp_path: Path, point: str) -> None:
    crashed = cli_runner.run(TRAIN_ARGS + ["--out", "run"], tmp_path, hook=CRASH_POINTS[point])
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    run = tmp_path / "run"
    assert_loadable(run)
    if point in ("weights-written-not-renamed", "trainer-written-not-renamed",
                 "best-weights-half-written"):
        assert list(run.glob(".*.tmp")), "the crash should have left a temporary file"
    if point == "metrics-line-torn":
        assert not (run / ckpt.METRICS).read_text(encoding="utf-8").endswith("\n")
    resumed = cli_runner.run(FINISH_ARGS, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run.glob(".*.tmp"))
    assert_equals_reference(run, reference)


@pytest.mark.slow
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
