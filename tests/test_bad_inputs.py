"""Bad input through the CLI: every case must fail with exactly one line on stderr,
``rnnlab: error: ...`` saying what is wrong (warning lines aside), a non-zero exit status, no
traceback, and nothing already in a run directory changed.

Each case runs ``python -m rnnlab ...`` in a child process (see cli_harness.py) on small files
made in tmp_path. Cases that touch an existing run hash every file of it before and after.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import rnnlab
from cli_harness import CliRunner, shared_runner
from rnnlab import checkpoint as ckpt
from rnnlab import cli

# --- inputs ----------------------------------------------------------------------------------

_WORDS = "the a cat dog sees likes river tree bird song old new runs sleeps".split()


def word_text(lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8))) + "\n"
                   for _ in range(lines))


def reviews_csv(rows: int = 80, labels: tuple[str, ...] = ("pos", "neg")) -> str:
    rng = random.Random(1)
    return "text,label\n" + "".join(
        f"{' '.join(rng.choice(_WORDS) for _ in range(5))},{rng.choice(labels)}\n"
        for _ in range(rows))


# Tiny everything; one thread (2 shared cores).
TINY = {"model.embedding_dim": 8, "model.hidden_size": 8, "model.num_layers": 1,
        "model.dropout": 0.0, "model.tie_weights": False, "train.device": "cpu",
        "train.threads": 1, "train.max_steps": 6, "train.eval_every": 3, "train.epochs": 1}


def set_args(values: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


TRAIN = ["train", *set_args({**TINY, "data.batch_size": 4, "data.bptt": 8}), "--samples", "0",
         "--out", "new"]
# A classifier has no bptt: setting it would be refused before the data is read.
CLF_TRAIN = ["train", *set_args({**TINY, "data.batch_size": 4}), "--out", "new", "--task",
             "classify"]


def train_run(folder: Path, overrides: dict[str, Any], preset: str | None = None) -> Path:
    config = rnnlab.resolve_config(preset=preset, overrides={**TINY, **overrides})
    return rnnlab.train(config, folder / "run").run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Trained runs to break: a word LM, a char LM and a classifier (copied per case)."""
    folder = tmp_path_factory.mktemp("runs")
    (folder / "words.txt").write_text(word_text(300), encoding="utf-8")
    (folder / "chars.txt").write_text("to be or not to be, that is the question.\n" * 40,
                                      encoding="utf-8")
    (folder / "reviews.csv").write_text(reviews_csv(), encoding="utf-8")
    made = {
        "word": train_run(folder / "word", {"data.text_path": str(folder / "words.txt"),
                                            "data.batch_size": 4, "data.bptt": 8}),
        "char": train_run(folder / "char", {"data.text_path": str(folder / "chars.txt"),
                                            "data.level": "char", "data.batch_size": 4,
                                            "data.bptt": 16}),
    }
    if importlib.util.find_spec("rnnlab.classify.task") is not None:
        made["clf"] = train_run(folder / "clf", {
            "task": "classify", "data.train_path": str(folder / "reviews.csv"),
            "data.batch_size": 8, "data.min_freq": 1, "data.max_vocab": 0, "train.max_minutes": 0,
            "train.warmup_steps": 0})
    return made


# --- the cases -------------------------------------------------------------------------------

Setup = Callable[[Path], None]  # gets tmp_path (the child's working directory)


@dataclass
class Case:
    args: list[str]
    expect: str  # a regex the error line must match (case-insensitive)
    setup: Setup | None = None
    run: str | None = None  # copy this trained run to tmp_path/run first, and watch it
    skip: str | None = None
    extra: Callable[[Path], None] | None = field(default=None)  # more checks after the run


def write(name: str, content: bytes | str) -> Setup:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        path.write_bytes(data)
    return setup


def edit_json(name: str, change: Callable[[Any], Any]) -> Setup:
    def setup(tmp: Path) -> None:
        path = tmp / "run" / name
        path.write_text(json.dumps(change(json.loads(path.read_text(encoding="utf-8")))),
                        encoding="utf-8")
    return setup


def truncate(name: str) -> Setup:
    def setup(tmp: Path) -> None:
        path = tmp / "run" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return setup


def last_weights(tmp: Path) -> Path:
    return tmp / "run" / ckpt.load_trainer_state(tmp / "run" / ckpt.TRAINER)["weights"]


def remove(name: str) -> Setup:
    def setup(tmp: Path) -> None:
        (tmp / "run" / name).unlink()
    return setup


def both(*setups: Setup) -> Setup:
    def setup(tmp: Path) -> None:
        for one in setups:
            one(tmp)
    return setup


class _CreatesMarker:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def malicious_trainer(tmp: Path) -> None:
    marker = tmp / "PWNED"
    buffer = io.BytesIO()
    torch.save({"format_version": 1, "step": 3, "evil": _CreatesMarker(str(marker))}, buffer)
    (tmp / "run" / ckpt.TRAINER).write_bytes(buffer.getvalue())
    # The payload is real: an unrestricted load does create the marker.
    torch.load(tmp / "run" / ckpt.TRAINER, weights_only=False)
    assert marker.exists()
    marker.unlink()


def no_marker(tmp: Path) -> None:
    assert not (tmp / "PWNED").exists(), "loading trainer.pt ran code"


def trainer_with(**changes: Any) -> Setup:
    def setup(tmp: Path) -> None:
        path = tmp / "run" / ckpt.TRAINER
        state = ckpt.load_trainer_state(path)
        state.update(changes)
        ckpt.save_trainer_state(state, path)
    return setup


def add_tokens(raw: dict[str, Any]) -> dict[str, Any]:
    return {**raw, "tokens": [*raw["tokens"], "zebra", "quokka"]}


HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
RESUME = ["train", "--resume", "run", "--samples", "0"]

CASES: dict[str, Case] = {
    # --- training data ---
    "empty-corpus": Case([*TRAIN, "--text", "c.txt"], "empty or only whitespace",
                         write("c.txt", "")),
    "whitespace-only": Case([*TRAIN, "--text", "c.txt"], "empty or only whitespace",
                            write("c.txt", "  \n\t\n \r\n")),
    "byte-order-mark-only": Case([*TRAIN, "--text", "c.txt"], "empty or only whitespace",
                                 write("c.txt", "\ufeff\n")),
    "non-utf8": Case([*TRAIN, "--text", "c.txt"], "not valid UTF-8",
                     write("c.txt", b"the cat \xff\xfe sees\n" * 20)),
    "binary-nul-bytes": Case([*TRAIN, "--text", "c.txt"], "binary",
                             write("c.txt", b"\x7fELF\x00\x01\x02" * 50)),
    "shorter-than-one-batch": Case([*TRAIN, "--text", "c.txt", "--set", "data.batch_size=64"],
                                   "too few for a batch", write("c.txt", word_text(8))),
    "too-short-to-split": Case([*TRAIN, "--text", "c.txt"], "too short to split",
                               write("c.txt", "one line only\n")),
    "corpus-file-missing": Case([*TRAIN, "--text", "nope.txt"], "file not found"),
    "corpus-is-a-directory": Case([*TRAIN, "--text", "d"], "is a directory",
                                  write("d/x.txt", "x")),
    "unknown-corpus": Case([*TRAIN, "--corpus", "nope"], "unknown corpus 'nope'"),
    "char-level-synthetic": Case([*TRAIN, "--level", "char"], "synthetic corpus is word level"),
    "unknown-preset": Case([*TRAIN, "--preset", "nope"], "unknown preset 'nope'"),
    "unknown-set-key": Case([*TRAIN, "--set", "train.nope=1"], "unknown config key"),
    "unknown-set-section": Case([*TRAIN, "--set", "nope.lr=1"], "unknown config key"),
    "set-without-equals": Case([*TRAIN, "--set", "train.lr"], "expects KEY=VALUE"),
    "lr-not-a-number": Case([*TRAIN, "--set", "train.lr=abc"], "train.lr: expected float"),
    "batch-size-not-an-int": Case([*TRAIN, "--set", "data.batch_size=1.5"],
                                  "batch_size: expected int"),
    "tie-weights-not-a-bool": Case([*TRAIN, "--set", "model.tie_weights=maybe"],
                                   "tie_weights: expected bool"),
    "batch-size-zero": Case([*TRAIN, "--set", "data.batch_size=0"], "must be positive"),
    "hidden-size-negative": Case([*TRAIN, "--set", "model.hidden_size=-1"], "must be positive"),
    "epochs-zero": Case([*TRAIN, "--epochs", "0"], "epochs must be positive"),
    "lr-negative": Case([*TRAIN, "--set", "train.lr=-0.1"], "lr must be positive"),
    "lr-nan": Case([*TRAIN, "--set", "train.lr=nan"], r"train\.lr .*finite"),
    "lr-inf": Case([*TRAIN, "--set", "train.lr=inf"], r"train\.lr .*finite"),
    "unknown-device": Case([*TRAIN, "--device", "tpu"], "unknown device"),
    "cuda-without-cuda": Case([*TRAIN, "--device", "cuda"], "CUDA is not available",
                              skip="CUDA is available" if torch.cuda.is_available() else None),
    "config-file-missing": Case([*TRAIN, "--config", "nope.toml"], "config file not found"),
    "config-file-not-toml": Case([*TRAIN, "--config", "c.toml"], "not valid TOML",
                                 write("c.toml", "[train\nlr = ")),
    "tensorboard-missing": Case([*TRAIN, "--tensorboard"], "needs the tensorboard package",
                                skip="tensorboard is installed" if HAS_TENSORBOARD else None),
    # --- run directories ---
    "run-does-not-exist": Case(["eval", "nope"], "run directory not found"),
    "not-a-run-directory": Case(["eval", "d"], r"not a run directory \(config.json is missing\)",
                                write("d/notes.txt", "hello")),
    "config-json-missing": Case(["eval", "run"], "config.json is missing", remove(ckpt.CONFIG),
                                run="word"),
    "config-json-corrupted": Case(["eval", "run"], "config.json is corrupted",
                                  write("run/config.json", '{"task": "lm", "mod'), run="word"),
    "config-json-wrong-format-version": Case(
        ["eval", "run"], "format version 99 is not supported",
        edit_json(ckpt.CONFIG, lambda raw: {**raw, "format_version": 99}), run="word"),
    "config-json-unknown-key": Case(
        ["eval", "run"], "unknown config key",
        edit_json(ckpt.CONFIG, lambda raw: {**raw, "model": {**raw["model"], "nope": 1}}),
        run="word"),
    "vocab-missing": Case(["eval", "run"], "vocabulary file not found", remove(ckpt.VOCAB),
                          run="word"),
    "vocab-corrupted": Case(["eval", "run"], "vocab.json is corrupted",
                            write("run/vocab.json", '{"tokens": ["a", '), run="word"),
    "vocab-malformed": Case(["eval", "run"], "vocabulary file is malformed",
                            write("run/vocab.json", '{"tokens": 3}'), run="word"),
    "vocab-does-not-match-weights": Case(["eval", "run"], "does the vocabulary match",
                                         edit_json(ckpt.VOCAB, add_tokens), run="word"),
    "weights-missing": Case(["eval", "run"], "has no model.safetensors", remove(ckpt.BEST),
                            run="word"),
    "weights-truncated": Case(["eval", "run"], "model.safetensors is corrupted",
                              truncate(ckpt.BEST), run="word"),
    "weights-not-safetensors": Case(["generate", "run"], "model.safetensors is corrupted",
                                    write("run/model.safetensors", b"\x00" * 64), run="word"),
    "eval-text-empty": Case(["eval", "run", "--text", "e.txt"], "empty or only whitespace",
                            write("e.txt", ""), run="word"),
    "eval-text-one-character": Case(["eval", "run", "--text", "e.txt"], "at least two tokens",
                                    write("e.txt", "t"), run="char"),
    "eval-text-non-utf8": Case(["eval", "run", "--text", "e.txt"], "not valid UTF-8",
                               write("e.txt", b"caf\xe9 au lait\n"), run="word"),
    "eval-split-absent": Case(["eval", "run", "--split", "test"], "has no test split",
                              run="word"),
    "eval-last-corrupted-trainer": Case(["eval", "run", "--weights", "last"],
                                        "trainer.pt is corrupted",
                                        write("run/trainer.pt", b"garbage"), run="word"),
    "eval-negative-threads": Case(["eval", "run", "--threads", "-1"], "--threads must be 0",
                                  run="word"),
    "generate-negative-threads": Case(["generate", "run", "--threads", "-2"],
                                      "--threads must be 0", run="word"),
    "generate-zero-tokens": Case(["generate", "run", "--tokens", "0"],
                                 "tokens to generate must be positive", run="word"),
    "generate-negative-temperature": Case(["generate", "run", "--temperature", "-1"],
                                          "temperature must be >= 0", run="word"),
    "generate-negative-top-k": Case(["generate", "run", "--top-k", "-1"], "top-k must be",
                                    run="word"),
    "generate-top-p-zero": Case(["generate", "run", "--top-p", "0"], r"top-p must be in \(0, 1\]",
                                run="word"),
    "generate-top-p-above-one": Case(["generate", "run", "--top-p", "1.5"], "top-p must be in",
                                     run="word"),
    "generate-nan-temperature": Case(["generate", "run", "--temperature", "nan"],
                                     "temperature must be >= 0 and finite", run="word"),
    "generate-infinite-temperature": Case(["generate", "run", "--temperature", "inf"],
                                          "temperature must be >= 0 and finite", run="word"),
    "generate-nan-top-p": Case(["generate", "run", "--top-p", "nan"], "top-p must be in",
                               run="word"),
    "eval-batch-size-zero": Case(["eval", "run", "--batch-size", "0"],
                                 "--batch-size must be positive, got 0", run="word"),
    "eval-batch-size-negative": Case(["eval", "run", "--batch-size", "-3"],
                                     "--batch-size must be positive, got -3", run="word"),
    "generate-zero-samples": Case(["generate", "run", "--num-samples", "0"],
                                  "number of samples must be positive", run="word"),
    "char-empty-prime": Case(["generate", "run", "--prime", ""], "prime text is empty",
                             run="char"),
    "char-prime-of-unknown-characters": Case(["generate", "run", "--prime", "ZQ#"],
                                             "not in the vocabulary", run="char"),
    "char-prime-all-skipped": Case(["generate", "run", "--prime", "ZQ#", "--skip-unknown"],
                                   "every character of the prime is outside", run="char"),
    "plot-missing-run": Case(["plot", "nope"], "run directory not found"),
    "runs-missing-folder": Case(["runs", "nope"], "not a directory"),
    # --- resuming ---
    "resume-run-does-not-exist": Case(["train", "--resume", "nope"], "run directory not found"),
    "resume-without-trainer-state": Case(RESUME, "nothing to resume", remove(ckpt.TRAINER),
                                         run="word"),
    "resume-corrupted-trainer-state": Case(RESUME, "trainer.pt is corrupted",
                                           write("run/trainer.pt", b"garbage" * 30), run="word"),
    "resume-truncated-trainer-state": Case(RESUME, "trainer.pt is corrupted or truncated",
                                           truncate(ckpt.TRAINER), run="word"),
    "resume-malicious-trainer-state": Case(RESUME, "holds Python objects .* refused to load",
                                           malicious_trainer, run="word", extra=no_marker),
    "resume-trainer-state-wrong-format-version": Case(
        RESUME, "unsupported format version", trainer_with(format_version=99), run="word"),
    "resume-trainer-state-of-another-run": Case(
        RESUME, "incomplete or does not match", trainer_with(optimizer={"state": {}}),
        run="word"),
    "resume-last-weights-missing": Case(RESUME, "weights file not found",
                                        lambda tmp: last_weights(tmp).unlink(), run="word"),
    "resume-last-weights-truncated": Case(
        RESUME, "is corrupted or not a safetensors file",
        lambda tmp: last_weights(tmp).write_bytes(last_weights(tmp).read_bytes()[:100]),
        run="word"),
    "resume-longer-budget-with-corrupted-state": Case(
        [*RESUME, "--max-steps", "50"], "trainer.pt is corrupted",
        write("run/trainer.pt", b"garbage"), run="word"),
    "resume-with-init-from": Case([*RESUME, "--init-from", "run"],
                                  "--init-from starts a new run", run="word"),
    "init-from-missing-run": Case([*TRAIN, "--init-from", "nope"], "run directory not found"),
    "resume-with-preset": Case([*RESUME, "--preset", "synthetic"],
                               "only budget and train.* options may change", run="word"),
    "resume-with-model-option": Case([*RESUME, "--set", "model.hidden_size=16"],
                                     "only budget and train.* options may change", run="word"),
    "resume-with-bad-budget": Case([*RESUME, "--epochs", "0"], "epochs must be positive",
                                   run="word"),
    # The seed draws a classifier's train/valid split and the order of batches and windows.
    "resume-classifier-with-seed": Case([*RESUME, "--seed", "5"],
                                        "--seed cannot be used with --resume", run="clf"),
    "resume-with-seed-set": Case([*RESUME, "--set", "train.seed=5"],
                                 "--seed cannot be used with --resume", run="word"),
    "resume-with-bare-seed-set": Case([*RESUME, "--set", "seed=5"],
                                      "--seed cannot be used with --resume", run="word"),
    "resume-with-out": Case([*RESUME, "--out", "elsewhere"],
                            "^rnnlab: error: --out cannot be used with --resume; the run "
                            "continues in run$", run="word"),
    "resume-with-nan-budget": Case([*RESUME, "--max-minutes", "nan"],
                                   r"train\.max_minutes .*finite", run="word"),
    "out-is-an-existing-run": Case([*TRAIN[:-2], "--out", "run"], "already holds a run",
                                   run="word"),
    # --- classifier ---
    "clf-missing-text-field": Case(
        [*CLF_TRAIN, "--train", "r.csv"], "no text field 'text'",
        write("r.csv", reviews_csv().replace("text,label", "body,label", 1))),
    "clf-missing-label-field": Case(
        [*CLF_TRAIN, "--train", "r.csv"], "no label field 'label'",
        write("r.csv", reviews_csv().replace("text,label", "text,stars", 1))),
    "clf-one-class": Case([*CLF_TRAIN, "--train", "r.csv"], "only one class",
                          write("r.csv", reviews_csv(labels=("pos",)))),
    "clf-non-utf8-line": Case([*CLF_TRAIN, "--train", "r.csv"],
                              "line 4 is not valid UTF-8",
                              write("r.csv", b"text,label\na b,pos\nc d,neg\nbad \xff,pos\n")),
    "clf-header-only": Case([*CLF_TRAIN, "--train", "r.csv"],
                            "contains no examples", write("r.csv", "text,label\n")),
    "clf-unknown-format": Case([*CLF_TRAIN, "--train", "r.txt"],
                               "cannot tell the format", write("r.txt", "a,b\n")),
    "clf-predict-nothing": Case(["predict", "run"], "nothing to classify", run="clf"),
    "clf-predict-batch-size-zero": Case(["predict", "run", "good", "--batch-size", "0"],
                                        "--batch-size must be positive, got 0", run="clf"),
    "clf-predict-empty-text": Case(["predict", "run", " "], "empty", run="clf"),
    "clf-predict-empty-file": Case(["predict", "run", "--file", "p.txt"],
                                   "empty or only whitespace", write("p.txt", "\n\n"), run="clf"),
    "clf-predict-non-utf8-file": Case(["predict", "run", "--file", "p.txt"], "not valid UTF-8",
                                      write("p.txt", b"good film\nbad \xff film\n"), run="clf"),
    "clf-eval-text": Case(["eval", "run", "--text", "e.txt"], "scores language models",
                          write("e.txt", "a b c"), run="clf"),
    "generate-from-a-classifier": Case(["generate", "run"], "not a language model", run="clf"),
    "predict-with-a-language-model": Case(["predict", "run", "good"], "classif", run="word"),
}


def snapshot(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def check_one_error_line(stderr: str, expect: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith("rnnlab: warning:")]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert lines[0].startswith("rnnlab: error: "), lines[0]
    assert re.search(expect, lines[0], re.IGNORECASE), f"{expect!r} not in {lines[0]!r}"
    return lines[0]


def prepare(case: Case, runs: dict[str, Path], tmp_path: Path) -> Path | None:
    if case.skip:
        pytest.skip(case.skip)
    run = None
    if case.run:
        if case.run not in runs:
            pytest.skip("the classifier is not available")
        run = tmp_path / "run"
        shutil.copytree(runs[case.run], run)
    if case.setup:
        case.setup(tmp_path)
    return run


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_one_clear_line(cli_runner: CliRunner, runs: dict[str, Path],
                                              tmp_path: Path, name: str) -> None:
    case = CASES[name]
    run = prepare(case, runs, tmp_path)
    before = snapshot(run) if run else None
    result = cli_runner.run(case.args, tmp_path)
    assert result.returncode not in (0, None), result.stdout
    assert result.returncode > 0, f"killed by signal {-result.returncode}: {result.stderr}"
    check_one_error_line(result.stderr, case.expect)
    if run is not None:
        assert snapshot(run) == before, "the run directory was changed"
    if not any(arg == "--resume" for arg in case.args) and "--out" in case.args:
        out = tmp_path / case.args[case.args.index("--out") + 1]
        assert out == run or not (out / ckpt.CONFIG).exists(), "a failed run left a run behind"
    if case.extra:
        case.extra(tmp_path)


@pytest.mark.parametrize("kind, args", [
    ("char", ["--prime", "to beZQ#"]),
    ("word", ["--prime", "the cat", "--top-k", "-1"]),
    ("word", ["--prime", "the cat", "--temperature", "nan", "--num-samples", "2"]),
])
def test_generate_that_fails_prints_nothing_on_stdout(
        cli_runner: CliRunner, runs: dict[str, Path], tmp_path: Path, kind: str,
        args: list[str]) -> None:
    # Scripts capture stdout as the sample: a failure must not leave the prime there.
    shutil.copytree(runs[kind], tmp_path / "run")
    result = cli_runner.run(["generate", "run", "--seed", "1", *args], tmp_path)
    assert result.returncode == 2, result.stderr
    check_one_error_line(result.stderr, ".")
    assert result.stdout == ""


@pytest.mark.slow
def test_a_fresh_interpreter_fails_the_same_way(runs: dict[str, Path], tmp_path: Path,
                                                cli_runner: CliRunner) -> None:
    # The matrix runs in forked children of a warm interpreter; a cold `python -m rnnlab` must
    # print the very same thing.
    case = CASES["resume-malicious-trainer-state"]
    prepare(case, runs, tmp_path)
    warm = cli_runner.run(case.args, tmp_path)
    cold = shared_runner(cold=True).run(case.args, tmp_path)
    assert (cold.returncode, cold.stderr) == (warm.returncode, warm.stderr)
    no_marker(tmp_path)


# --- a full disk -------------------------------------------------------------------------------

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["last-weights", "trainer-state", "best-weights"])
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        where: str) -> None:
    run = tmp_path / "run"
    seen: dict[str, Any] = {"calls": 0, "files": None}

    def fail_second(kind: str) -> None:
        seen["calls"] += 1
        if seen["calls"] == 2:  # the second checkpoint: the first one is there to protect
            seen["files"] = {k: v for k, v in snapshot(run).items()
                             if not k.endswith(".jsonl") and not k.startswith(".")}
            raise ENOSPC

    real_replace, real_fsync = os.replace, os.fsync

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        name = os.path.basename(str(dst))
        if (where == "last-weights" and name.startswith("last-")) or (
                where == "trainer-state" and name == ckpt.TRAINER):
            fail_second(where)
        real_replace(src, dst, *args, **kwargs)

    def fsync(fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if where == "best-weights" and name.startswith(f".{ckpt.BEST}."):
            try:
                fail_second(where)
            except OSError:
                os.ftruncate(fd, 100)  # the disk filled up part-way through the new weights
                raise
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    # A steady decrease (high constant rate) makes every evaluation a new best.
    args = ["train", "--preset", "synthetic", "--samples", "0", "--out", str(run),
            *set_args({**TINY, "data.synthetic_tokens": 3000, "data.batch_size": 4,
                       "data.bptt": 8, "train.max_steps": 12, "train.eval_every": 4,
                       "train.lr": 0.01, "train.schedule": "constant",
                       "train.warmup_steps": 0})]
    code = cli.main(args)
    err = capsys.readouterr().err
    assert seen["files"] is not None, "the simulated failure never happened"
    assert code != 0
    line = check_one_error_line(err, "could not write a checkpoint .*No space left on device")
    assert "previous checkpoint is intact" in line and "--resume" in line
    monkeypatch.undo()
    after = {k: v for k, v in snapshot(run).items() if k in seen["files"]}
    assert after == seen["files"], "files of the previous checkpoint changed"
    assert not list(run.glob(".*.tmp")), "temporary files left behind"
    state = ckpt.load_trainer_state(run / ckpt.TRAINER)
    assert state["step"] in (4, 8) and (run / state["weights"]).exists()
    rnnlab.LanguageModel.load(run)
    # Space is back: the run resumes from the previous checkpoint and completes.
    result = rnnlab.resume(run)
    assert result.steps == 12
    assert [r["step"] for r in result.metrics] == [4, 8, 12]
