"""Signals: SIGTERM and Ctrl-C stop a run at a checkpoint and say how to resume it; a second
Ctrl-C stops at once; a run directory in use is refused to a second process."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from cli_harness import CliRunner, wait_for
from rnnlab import checkpoint as ckpt
from run_states import FINISH_ARGS, TRAIN_ARGS, assert_loadable


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(cli_runner: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    child = cli_runner.start(TRAIN_ARGS + ["--out", "run"], tmp_path)
    wait_for(lambda: (run / ckpt.TRAINER).exists(), child, "the first checkpoint")
    child.send_signal(signal.SIGTERM)
    result = child.wait()
    assert result.returncode == 130, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rnnlab train --resume run" in lines[0], result.stderr
    state = ckpt.load_trainer_state(run / ckpt.TRAINER)
    assert f"interrupted at step {state['step']};" in lines[0]  # it saved where it stopped
    assert_loadable(run)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_leaves_a_loadable_run(
        cli_runner: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    child = cli_runner.start(TRAIN_ARGS + ["--out", "run"], tmp_path)
    wait_for(lambda: (run / ckpt.TRAINER).exists(), child, "the first checkpoint")
    child.send_signal(signal.SIGINT)
    child.send_signal(signal.SIGINT)  # impatient: may land inside the final checkpoint's write
    result = child.wait()
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    # The first Ctrl-C says what will happen, the second what did (or the run stopped first).
    assert 1 <= len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert "rnnlab train --resume run" in result.stderr
    assert_loadable(run)
    resumed = cli_runner.run(FINISH_ARGS, tmp_path)
    assert resumed.returncode == 0, resumed.stderr


# Python run in the child before the CLI: SIGINT, as Ctrl-C sends it, from inside the Nth
# evaluation of the run (the evaluation then goes on, as a real one would).
_SIGINT_IN_EVAL = """
import os, signal, sys
from rnnlab.lm.task import LanguageModelTask
real, calls = LanguageModelTask.evaluate, [0]
def evaluate(self, split):
    calls[0] += 1
    if calls[0] == EVAL:
        for _ in range(PRESSES):
            signal.raise_signal(signal.SIGINT)
        print("still evaluating", file=sys.stderr, flush=True)
    return real(self, split)
LanguageModelTask.evaluate = evaluate
"""


def sigint_in_eval(evaluation: int, presses: int) -> str:
    return _SIGINT_IN_EVAL.replace("EVAL", str(evaluation)).replace("PRESSES", str(presses))


@pytest.mark.slow
def test_ctrl_c_in_the_last_evaluation_says_so_at_once_saves_and_exits_130(
        cli_runner: CliRunner, tmp_path: Path) -> None:
    # Evaluations at steps 20 and 25 (the end of the step budget): Ctrl-C lands in the last.
    args = TRAIN_ARGS + ["--out", "run", "--max-steps", "25", "--set", "train.checkpoint_every=0"]
    result = cli_runner.run(args, tmp_path, hook=sigint_in_eval(2, 1))
    assert result.returncode == 130, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("rnnlab: stopping after the current step or evaluation and "
                               "saving"), result.stderr
    assert "Ctrl-C again" in lines[0]
    assert lines[1] == "still evaluating"  # said before the evaluation ended
    assert lines[2] == "rnnlab: interrupted at step 25; resume with: rnnlab train --resume run"
    assert len(lines) == 3, result.stderr
    assert assert_loadable(tmp_path / "run") == 25


@pytest.mark.slow
def test_a_second_ctrl_c_in_an_evaluation_says_which_checkpoint_stands(
        cli_runner: CliRunner, tmp_path: Path) -> None:
    args = TRAIN_ARGS + ["--out", "run", "--set", "train.checkpoint_every=0"]
    # In the evaluation of step 40:
    result = cli_runner.run(args, tmp_path, hook=sigint_in_eval(2, 2))
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("rnnlab: stopping after the current step or evaluation")
    assert "the last checkpoint (step 20) stands and nothing newer was saved" in lines[1]
    assert "rnnlab train --resume run" in lines[1]
    assert assert_loadable(tmp_path / "run") == 20


@pytest.mark.slow
def test_a_run_directory_in_use_is_refused_to_a_second_run_and_to_a_resume(
        cli_runner: CliRunner, tmp_path: Path) -> None:
    from rnnlab.run_lock import claim_run

    run = tmp_path / "run"
    first = cli_runner.run(TRAIN_ARGS + ["--out", "run", "--max-steps", "3"], tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with claim_run(run, new=False):  # as a process resuming it a moment earlier would
        for args in (TRAIN_ARGS + ["--out", "run"], FINISH_ARGS + ["--max-steps", "6"]):
            result = cli_runner.run(args, tmp_path)
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [
                "rnnlab: error: run is in use by another rnnlab process (training or resuming "
                "it); wait for it to end or use another --out"]
            assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    # Two new runs into one new directory: the second is refused before it writes anything.
    with claim_run(tmp_path / "new", new=True):
        result = cli_runner.run(TRAIN_ARGS + ["--out", "new"], tmp_path)
        assert result.returncode == 2 and "new is in use" in result.stderr, result.stderr
        assert list((tmp_path / "new").iterdir()) == []


@pytest.mark.slow
def test_a_run_that_fails_before_its_first_checkpoint_leaves_its_name_free(
        cli_runner: CliRunner, tmp_path: Path) -> None:
    failed = cli_runner.run(TRAIN_ARGS + ["--out", "run", "--set", "train.lr=1e30",
                                   "--set", "train.checkpoint_every=0"], tmp_path)
    assert failed.returncode == 2, failed.stderr
    assert "--resume" not in failed.stderr  # there is nothing to resume
    assert "start the run again" in failed.stderr
    assert not (tmp_path / "run").exists()
    # A run killed before its first checkpoint leaves config.json but nothing to resume.
    (tmp_path / "run").mkdir()
    for name in (ckpt.CONFIG, ckpt.VOCAB, ckpt.TRAIN_LOG):
        (tmp_path / "run" / name).write_text("{}\n")
    again = cli_runner.run(TRAIN_ARGS + ["--out", "run", "--max-steps", "3"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["step"] for r in ckpt.read_metrics(tmp_path / "run", ckpt.TRAIN_LOG)] == [3]
