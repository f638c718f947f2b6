"""Reproducibility and seeing a run: the same seed and config give the same numbers in two
separate processes; run.json says what made the run; curves and TensorBoard scalars are written.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import rnnlab
from cli_harness import shared_runner
from rnnlab import checkpoint as ckpt
from rnnlab import cli
from rnnlab.training import callbacks as callbacks_module
from rnnlab.training.callbacks import PlotCurves
from rnnlab.training.tensorboard import TensorBoardLogger

TIMING = {"elapsed", "eval_seconds"}

# Word-level text read from a file (its vocabulary is built in each process), dropout and
# variable BPTT (both draw random numbers), a cosine schedule with warm-up.
SETTINGS: dict[str, Any] = {
    "model.embedding_dim": 16, "model.hidden_size": 24, "model.num_layers": 2,
    "model.dropout": 0.2, "data.batch_size": 8, "data.bptt": 12, "data.variable_bptt": True,
    "train.epochs": 2, "train.eval_every": 20, "train.log_every": 5, "train.lr": 5e-3,
    "train.warmup_steps": 10, "train.device": "cpu", "train.threads": 1, "train.seed": 99,
}


def write_corpus(path: Path) -> Path:
    rng = random.Random(4)
    words = [f"w{i}" for i in range(60)]
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
                            + "\n" for _ in range(500)), encoding="utf-8")
    return path


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("_per_s")}
            for r in records]


def cli_args(out: str) -> list[str]:
    args = ["train", "--text", "corpus.txt", "--samples", "0", "--out", out]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.mark.slow
def test_same_seed_same_numbers_in_two_processes_and_run_json_says_how(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus.txt")
    # Fresh interpreters with different hash seeds: nothing (vocabulary order, say) may depend
    # on set/dict hashing. Both run at once: the test then takes half the time on 2 cores.
    runner = shared_runner(cold=True)
    procs = [runner.start(cli_args(name), tmp_path, env={"PYTHONHASHSEED": hash_seed})
             for name, hash_seed in (("a", "1"), ("b", "2"))]
    for proc in procs:
        result = proc.wait(timeout=180)
        assert result.returncode == 0, result.stderr
    a, b = tmp_path / "a", tmp_path / "b"
    metrics = ckpt.read_metrics(a)
    assert len(metrics) >= 4
    assert comparable(metrics) == comparable(ckpt.read_metrics(b))
    assert comparable(ckpt.read_metrics(a, ckpt.TRAIN_LOG)) == comparable(
        ckpt.read_metrics(b, ckpt.TRAIN_LOG))
    assert (a / ckpt.VOCAB).read_bytes() == (b / ckpt.VOCAB).read_bytes()
    wa, wb = load_file(a / ckpt.BEST), load_file(b / ckpt.BEST)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    info = json.loads((a / ckpt.RUN_INFO).read_text(encoding="utf-8"))
    assert info["rnnlab"] == rnnlab.__version__
    assert info["torch"] == torch.__version__
    assert info["python"] == platform.python_version()
    assert info["device"] == "cpu"
    assert info["command"][1:] == cli_args("a")  # argv[0] is the program's path
    assert info["summary"]["stop_reason"] == "epochs"
    assert info["summary"]["steps"] == metrics[-1]["step"]

    # The CLI draws the learning curves at the end (matplotlib is a test dependency here).
    if importlib.util.find_spec("matplotlib") is not None:
        assert (a / PlotCurves.NAME).stat().st_size > 1000

    # The comparison can fail: another seed gives other numbers.
    config = rnnlab.resolve_config(overrides={
        **SETTINGS, "data.text_path": str(tmp_path / "corpus.txt"), "train.seed": 100,
        "train.epochs": 1})
    other = rnnlab.train(config, tmp_path / "c")
    assert comparable(other.metrics)[0] != comparable(metrics)[0]


# --- seeing a run: curves and TensorBoard --------------------------------------------------------

TINY: dict[str, Any] = {
    "data.corpus": "synthetic", "data.synthetic_tokens": 3000, "data.batch_size": 8,
    "data.bptt": 10, "model.embedding_dim": 8, "model.hidden_size": 8, "model.num_layers": 1,
    "train.max_steps": 20, "train.eval_every": 10, "train.log_every": 4, "train.device": "cpu",
    "train.threads": 1,
}


class FakeWriter:
    """Records what a SummaryWriter is asked to do."""

    made: list[FakeWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None, flush_secs: int = 120):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (tag, value)
        self.scalars.append((tag, value, step))

    def flush(self) -> None: ...

    def close(self) -> None:
        self.closed = True


def test_tensorboard_logger_writes_train_and_valid_scalars(tmp_path: Path) -> None:
    FakeWriter.made = []
    config = rnnlab.resolve_config(preset="synthetic", overrides=TINY)
    result = rnnlab.train(config, tmp_path / "run",
                          callbacks=[TensorBoardLogger(writer_factory=FakeWriter)])
    writer = FakeWriter.made[0]
    assert writer.log_dir == str(tmp_path / "run" / "tensorboard")
    assert writer.purge_step is None and writer.closed
    tags = {(tag, step) for tag, _, step in writer.scalars}
    assert {("train/loss", s) for s in range(4, 21, 4)} <= tags
    assert {("train/lr", 4), ("valid/loss", 10), ("valid/ppl", 20), ("train/loss_mean", 10),
            ("speed/tokens_per_s", 10), ("train/epoch", 20)} <= tags
    valid = {step: value for tag, value, step in writer.scalars if tag == "valid/loss"}
    assert valid == {r["step"]: r["loss"] for r in result.metrics}

    # A resumed run purges what a crashed process may have logged past its checkpoint.
    rnnlab.resume(tmp_path / "run", {"train.max_steps": 24},
                  callbacks=[TensorBoardLogger(writer_factory=FakeWriter)])
    assert FakeWriter.made[1].purge_step == 20


def test_train_tensorboard_flag_writes_event_files(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    args = ["train", "--preset", "synthetic", "--tensorboard", "--samples", "0",
            "--out", str(tmp_path / "run")]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    assert cli.main(args) == 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_flag_without_the_package_is_one_clear_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    code = cli.main(["train", "--tensorboard", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "rnnlab: error: --tensorboard needs the tensorboard package: pip install tensorboard"]
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_failing_plot_is_a_warning_not_a_failed_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no fonts today")

    monkeypatch.setattr("rnnlab.plots.plot_runs", broken)
    config = rnnlab.resolve_config(preset="synthetic", overrides=TINY)
    with pytest.warns(RuntimeWarning, match="could not draw .*curves.png: no fonts today"):
        result = rnnlab.train(config, tmp_path / "run", callbacks=[PlotCurves()])
    assert result.stop_reason == "max_steps"
    assert not (tmp_path / "run" / PlotCurves.NAME).exists()


def test_no_matplotlib_means_no_plot_and_no_noise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(callbacks_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    config = rnnlab.resolve_config(preset="synthetic", overrides=TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnnlab.train(config, tmp_path / "run", callbacks=[PlotCurves()])
    assert not (tmp_path / "run" / PlotCurves.NAME).exists()
