"""Exact resume through the real CLI: Ctrl-C (a real SIGINT) a ``python -m rnnlab train``
process after its first checkpoint, ``rnnlab train --resume`` it, and compare with a run that was
never interrupted.

The comparison is strict: every tensor of the best and the last weights is ``torch.equal`` and
every value of metrics.jsonl and train_log.jsonl is identical, except wall-clock fields.

To save time on 2 cores, the uninterrupted run trains in this process while the interrupted one
starts up, and the resume runs in a child of the warm server of cli_harness.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import rnnlab
from cli_harness import CliRunner, Result, shared_runner
from rnnlab import checkpoint as ckpt
from run_states import set_args

# Wall-clock fields differ between any two runs; everything else must not.
TIMING = {"elapsed", "eval_seconds"}

# A tiny LM on the built-in synthetic corpus: 75 steps per epoch, so a run lasts long enough
# for the signal to land mid-run.
LM_BASE: dict[str, Any] = {
    "data.corpus": "synthetic", "data.synthetic_tokens": 6_000, "data.batch_size": 8,
    "data.bptt": 10, "data.eval_batch_size": 8, "model.cell": "lstm", "model.embedding_dim": 16,
    "model.hidden_size": 16, "model.num_layers": 1, "model.tie_weights": True,
    "model.dropout": 0.0, "train.epochs": 2, "train.device": "cpu", "train.threads": 1,
    "train.seed": 11, "train.log_every": 5,
}

LM_VARIANTS: dict[str, dict[str, Any]] = {
    # Evaluations (and so checkpoints) every 25 steps: mid-epoch; cosine schedule with warm-up,
    # which depends on the position in the budget that the resume must restore.
    "fixed-bptt": {"train.eval_every": 25, "train.schedule": "cosine",
                   "train.warmup_steps": 20},
    # Random window lengths, dropout (both draw from the RNG that the checkpoint carries), a GRU,
    # checkpoints between evaluations and a plateau schedule whose decays live in trainer.pt.
    "variable-bptt": {"data.variable_bptt": True, "model.cell": "gru", "model.dropout": 0.2,
                      "model.embedding_dropout": 0.1, "train.eval_every": 30,
                      "train.checkpoint_every": 7, "train.schedule": "plateau",
                      "train.patience": 0, "train.lr_decay": 0.5, "train.lr": 0.01},
}


class Interrupter(threading.Thread):
    """Start a real ``python -m rnnlab ARGS`` process, poll the file system for its first
    checkpoint (with a deadline), then send it SIGINT as Ctrl-C would; the outcome lands in
    ``result``/``failure``.

    It runs in a thread so that the reference run can train meanwhile.
    """

    def __init__(self, args: list[str], run: Path, cwd: Path, within: float = 120.0):
        super().__init__(daemon=True)
        self.args = args
        self.run_dir, self.cwd, self.within = run, cwd, within
        self.result: Result | None = None
        self.failure: str | None = None

    def run(self) -> None:
        proc = shared_runner(cold=True).start(self.args, self.cwd)
        deadline = time.monotonic() + self.within
        while not (self.run_dir / ckpt.TRAINER).exists():
            if proc.poll():
                self.failure = "training ended before its first checkpoint"
                break
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGKILL)
                self.failure = f"no checkpoint within {self.within} s"
                break
            time.sleep(0.002)
        else:
            proc.send_signal(signal.SIGINT)
        self.result = proc.wait(timeout=self.within)
        if self.failure:
            self.failure += f" (rc {self.result.returncode})"

    def outcome(self) -> Result:
        self.join(timeout=2 * self.within)
        assert self.result is not None, "the interrupted run did not finish"
        if self.failure:
            pytest.fail(f"{self.failure}:\n{self.result.stderr}")
        return self.result


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("_per_s")}
            for r in records]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys(), (a, b)
    different = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not different, f"{a.name}: tensors differ: {different}"


def assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    """Same final weights (best and last) and the same logged values, bit for bit."""
    last = ckpt.load_trainer_state(resumed / ckpt.TRAINER)["weights"]
    assert last == ckpt.load_trainer_state(uninterrupted / ckpt.TRAINER)["weights"]
    assert_same_weights(resumed / last, uninterrupted / last)
    assert_same_weights(resumed / ckpt.BEST, uninterrupted / ckpt.BEST)
    metrics = ckpt.read_metrics(resumed)
    assert len(metrics) >= 3
    assert comparable(metrics) == comparable(ckpt.read_metrics(uninterrupted))
    log = ckpt.read_metrics(resumed, ckpt.TRAIN_LOG)
    assert comparable(log) == comparable(ckpt.read_metrics(uninterrupted, ckpt.TRAIN_LOG))
    assert not list(resumed.glob(".*.tmp")), "temporary files left behind"


def check_interrupted(result: Result, run: Path) -> int:
    """Exit status 130 and a resume hint on stderr; returns the step it stopped at."""
    assert result.returncode == 130, result.stderr
    assert f"rnnlab train --resume {run.name}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    state = ckpt.load_trainer_state(run / ckpt.TRAINER)
    assert (run / state["weights"]).exists()
    return state["step"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_lm_interrupted_by_sigint_then_resumed_equals_uninterrupted(
        cli_runner: CliRunner, tmp_path: Path, variant: str) -> None:
    overrides = {**LM_BASE, **LM_VARIANTS[variant]}
    cut = tmp_path / "cut"
    interrupter = Interrupter(["train", "--preset", "synthetic", *set_args(overrides), "--out",
                               cut.name, "--samples", "0"], cut, tmp_path)
    interrupter.start()
    config = rnnlab.resolve_config(preset="synthetic", overrides=overrides)
    full = rnnlab.train(config, tmp_path / "full")  # the reference, meanwhile
    assert full.stop_reason == "epochs"
    stopped_at = check_interrupted(interrupter.outcome(), cut)
    # The interruption must fall strictly inside the run, or nothing was resumed.
    steps_per_epoch = 75
    assert 0 < stopped_at < overrides["train.epochs"] * steps_per_epoch

    resumed = cli_runner.run(["train", "--resume", cut.name, "--samples", "0", "--no-plot"],
                             tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "stopped: epochs" in resumed.stdout
    assert_same_run(cut, full.run_dir)


def write_reviews(path: Path, rows: int = 600, seed: int = 3) -> Path:
    """A tiny sentiment CSV: filler words plus one telling word per review."""
    rng = random.Random(seed)
    good, bad = "good great fine lovely superb".split(), "bad awful poor dull weak".split()
    filler = "the movie was plot acting film story and it".split()
    lines = ["text,label"]
    for _ in range(rows):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(filler) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(good if label == "pos" else bad))
        lines.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CLASSIFY: dict[str, Any] = {
    "task": "classify", "model.embedding_dim": 16, "model.hidden_size": 16,
    "model.num_layers": 1, "model.dropout": 0.2, "data.batch_size": 16, "data.min_freq": 1,
    "data.max_vocab": 0, "data.eval_batch_size": 64, "train.epochs": 3, "train.eval_every": 10,
    "train.warmup_steps": 5, "train.device": "cpu", "train.threads": 1, "train.seed": 5,
    # A time budget would make the cosine schedule depend on the wall clock.
    "train.max_minutes": 0,
}


@pytest.mark.slow
def test_classifier_interrupted_by_sigint_then_resumed_equals_uninterrupted(
        cli_runner: CliRunner, tmp_path: Path) -> None:
    pytest.importorskip("rnnlab.classify.task")
    data = write_reviews(tmp_path / "reviews.csv")
    overrides = {**CLASSIFY, "data.train_path": data.name}
    cut = tmp_path / "cut"
    interrupter = Interrupter(["train", *set_args(overrides), "--out", cut.name], cut, tmp_path)
    interrupter.start()
    config = rnnlab.resolve_config(overrides={**overrides, "data.train_path": str(data)})
    full = rnnlab.train(config, tmp_path / "full")  # the reference, meanwhile
    assert full.stop_reason == "epochs"
    stopped_at = check_interrupted(interrupter.outcome(), cut)
    assert stopped_at < 3 * 30  # 480 training reviews / 16 = 30 steps per epoch

    resumed = cli_runner.run(["train", "--resume", cut.name, "--no-plot"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(cut, full.run_dir)
    assert json.loads((cut / ckpt.VOCAB).read_text()) == json.loads(
        (full.run_dir / ckpt.VOCAB).read_text())


@pytest.mark.slow
def test_variable_bptt_epochs_end_when_their_windows_run_out(tmp_path: Path) -> None:
    # Every epoch of variable BPTT has its own number of windows. The run must train on exactly
    # all of them, epoch after epoch (counting epoch 0's windows instead would hang on a
    # shorter epoch and skip the tail of a longer one), or a resumed position means nothing.
    from rnnlab.lm.task import build_lm_task

    overrides = {**LM_BASE, "data.variable_bptt": True, "train.epochs": 4,
                 "data.synthetic_tokens": 4000, "train.log_every": 0}
    config = rnnlab.resolve_config(preset="synthetic", overrides=overrides)
    task = build_lm_task(config, torch.device("cpu"))
    windows = [len(task._lengths(epoch)) for epoch in range(4)]
    assert len(set(windows)) > 1, "the seed should give epochs of different lengths"
    # A hang must fail, not block the suite: Ctrl-C ourselves after a generous minute.
    watchdog = threading.Timer(60, os.kill, (os.getpid(), signal.SIGINT))
    watchdog.start()
    try:
        result = rnnlab.train(config, tmp_path / "run")
    finally:
        watchdog.cancel()
    assert result.stop_reason == "epochs"
    assert result.steps == sum(windows)
    ends = [r["step"] for r in result.metrics if float(r["epoch"]).is_integer()]
    assert ends == [sum(windows[: i + 1]) for i in range(4)]


def _damage_vocab_lost_a_token(run: Path) -> str:
    raw = json.loads((run / ckpt.VOCAB).read_text(encoding="utf-8"))
    del raw["tokens"][5]
    (run / ckpt.VOCAB).write_text(json.dumps(raw), encoding="utf-8")
    return (r"run/vocab.json holds \d+ tokens but embedding.weight in last-00000004.safetensors "
            r"has \d+ rows")


def _damage_vocab_swapped_two_tokens(run: Path) -> str:
    raw = json.loads((run / ckpt.VOCAB).read_text(encoding="utf-8"))
    raw["tokens"][5], raw["tokens"][6] = raw["tokens"][6], raw["tokens"][5]
    (run / ckpt.VOCAB).write_text(json.dumps(raw), encoding="utf-8")
    return r"the vocabulary of the training data .* differs from .*vocab.json.*; id 5 is"


def _damage_config_other_hidden_size(run: Path) -> str:
    raw = json.loads((run / ckpt.CONFIG).read_text(encoding="utf-8"))
    raw["model"]["hidden_size"] = 8
    (run / ckpt.CONFIG).write_text(json.dumps(raw), encoding="utf-8")
    return r"config.json gives rnn\.\w+ the shape \(\d+,( \d+)?\) but .* holds \(\d+"


@pytest.mark.parametrize("damage", [_damage_vocab_lost_a_token, _damage_vocab_swapped_two_tokens,
                                    _damage_config_other_hidden_size],
                         ids=["vocab-lost-a-token", "vocab-swapped", "config-hidden-size"])
def test_resume_refuses_vocabulary_or_config_that_do_not_fit_the_weights_and_writes_nothing(
        tmp_path: Path, damage: Any) -> None:
    overrides = {**LM_BASE, "train.max_steps": 4, "train.eval_every": 2}
    run = rnnlab.train(rnnlab.resolve_config(preset="synthetic", overrides=overrides),
                       tmp_path / "run").run_dir
    expected = damage(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(rnnlab.RnnlabError, match=expected) as caught:
        rnnlab.resume(run, {"train.max_steps": 8})
    assert "\n" not in str(caught.value)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# --- portability: a checkpoint written on a GPU resumes on a CPU --------------------------------


@contextlib.contextmanager
def saved_as_if_on_cuda() -> Iterator[None]:
    """Make torch.save record every tensor's location as ``cuda:0``, as it does on a GPU.

    The bytes of a checkpoint written on a GPU differ from a CPU one only in that location tag,
    so this exercises the CPU side of a GPU-to-CPU move without a GPU.
    """
    entry = (0, lambda storage: "cuda:0", lambda storage, location: None)
    torch.serialization._package_registry.append(entry)
    torch.serialization._package_registry.sort(key=lambda item: item[0])
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


@pytest.mark.slow
def test_trainer_state_written_on_cuda_resumes_on_cpu(tmp_path: Path) -> None:
    # A constant rate: a cosine schedule would depend on the shorter budget of the cut run.
    overrides = {**LM_BASE, "train.max_steps": 20, "train.eval_every": 6,
                 "train.schedule": "constant", "train.warmup_steps": 0}
    full = rnnlab.train(rnnlab.resolve_config(preset="synthetic", overrides=overrides),
                        tmp_path / "full")
    cut = rnnlab.train(rnnlab.resolve_config(
        preset="synthetic", overrides={**overrides, "train.max_steps": 12}), tmp_path / "cut")
    path = cut.run_dir / ckpt.TRAINER
    state = ckpt.load_trainer_state(path)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # a GPU run saves its RNG too
    with saved_as_if_on_cuda():
        ckpt.save_trainer_state(state, path)
    if not torch.cuda.is_available():
        # Proof that the file claims CUDA: without a map_location it cannot load here.
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    resumed = rnnlab.resume(cut.run_dir, {"train.max_steps": 20, "train.device": "cpu"})
    assert resumed.steps == 20
    assert_same_run(cut.run_dir, full.run_dir)
    # Weights files hold CPU tensors whatever device trained them.
    lm = rnnlab.LanguageModel.load(cut.run_dir, weights="last", device="cpu")
    assert next(lm.model.parameters()).device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_trained_on_cuda_resumes_and_loads_on_cpu(tmp_path: Path) -> None:
    overrides = {**LM_BASE, "train.max_steps": 12, "train.eval_every": 6, "train.device": "cuda"}
    run = rnnlab.train(rnnlab.resolve_config(preset="synthetic", overrides=overrides),
                       tmp_path / "run").run_dir
    raw = torch.load(run / ckpt.TRAINER, weights_only=True)  # as saved: tensors on the GPU
    assert any(t.is_cuda for s in raw["optimizer"]["state"].values() for t in s.values()
               if isinstance(t, torch.Tensor))
    resumed = rnnlab.resume(run, {"train.max_steps": 18, "train.device": "cpu"})
    assert resumed.steps == 18
    lm = rnnlab.LanguageModel.load(run, device="cpu")
    assert all(torch.isfinite(p).all() for p in lm.model.parameters())
