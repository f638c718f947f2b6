"""The ``rnnlab`` command end to end, in separate processes (through cli_harness.py).

The main path (train -> eval -> generate twice, and ``--version``) runs as real
``python -m rnnlab ...`` processes. Each of those pays for importing torch, so every other command
(the many bad inputs, ``presets``, ``train --text``, more generate and eval variants) runs in a
child forked from the harness's warm server. All the commands run once, in two module-scoped
batches; the tests read the results.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

import rnnlab
from cli_harness import Result, run_batch, shared_runner
from rnnlab import checkpoint as ckpt
from rnnlab.api import LanguageModel


def _env(data_dir: Path) -> dict[str, str]:
    return {"RNNLAB_DATA": str(data_dir)}


def _write(path: Path, content: bytes | str) -> str:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


# name -> (arguments, a fragment the one error line must contain)
BAD_INPUTS: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "empty-file": (lambda d: ["train", "--text", _write(d / "empty.txt", b"")], "empty"),
    "whitespace-file": (
        lambda d: ["train", "--text", _write(d / "blank.txt", " \n\t\n  \n")], "whitespace"),
    "non-utf8-file": (
        lambda d: ["train", "--text", _write(d / "latin1.txt", "café au lait\n".encode("latin-1"))],
        "UTF-8"),
    "unknown-corpus": (lambda d: ["train", "--corpus", "no-such-corpus"], "unknown corpus"),
    "unknown-preset": (lambda d: ["train", "--preset", "no-such-preset"], "unknown preset"),
    "unknown-set-key": (lambda d: ["train", "--set", "train.no_such_key=1"], "unknown config key"),
    "wrong-type": (lambda d: ["train", "--set", "train.lr=abc"], "expected float"),
    "key-of-the-other-task": (lambda d: ["train", "--task", "classify", "--set", "data.bptt=8"],
                              "data.bptt is for --task lm only"),
    "non-positive-size": (lambda d: ["train", "--set", "data.batch_size=0"], "must be positive"),
    "shorter-than-one-batch": (
        lambda d: ["train", "--train", _write(d / "short.txt", "hello world\n" * 3),
                   "--valid", _write(d / "short-valid.txt", "hello world\n"),
                   "--set", "data.batch_size=20"],
        "too few"),
    "eval-missing-run": (lambda d: ["eval", str(d / "no-such-run")], "not found"),
    "eval-corrupt-config": (lambda d: ["eval", str(d / "corrupt-config")], "corrupted"),
    "eval-truncated-weights": (lambda d: ["eval", str(d / "truncated-weights")], "corrupted"),
    "generate-truncated-weights": (
        lambda d: ["generate", str(d / "truncated-weights"), "--seed", "1"], "corrupted"),
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory,
        make_word_corpus: Callable[..., Path]) -> dict[str, Result]:
    """Every command of this module, run in a fresh folder; results by name."""
    work = tmp_path_factory.mktemp("cli")
    (work / "data").mkdir()
    needs_run = {name for name in BAD_INPUTS if "truncated" in name or "corrupt" in name}

    # First batch: everything that needs no trained run.
    corpus = make_word_corpus(work / "small.txt", lines=300)
    first = {
        "train": ["train", "--set", "data.synthetic_tokens=30000", "--epochs", "1",
                  "--out", "run", "--samples", "2", "--threads", "1"],
    }
    first_forked = {
        "train-text": ["train", "--text", str(corpus), "--out", "text-run", "--epochs", "1",
                       "--set", "model.hidden_size=32", "--set", "model.embedding_dim=32",
                       "--set", "model.num_layers=1", "--set", "data.batch_size=8",
                       "--samples", "1"],
        "presets": ["presets"],
        **{name: make(work) for name, (make, _) in BAD_INPUTS.items() if name not in needs_run},
    }
    results = run_batch(first, first_forked, work, env=_env(work / "data"))
    assert results["train"].returncode == 0, results["train"].stderr
    run = work / "run"

    # Second batch: commands on the trained run, and damaged copies of it.
    shutil.copytree(run, work / "corrupt-config")
    (work / "corrupt-config" / ckpt.CONFIG).write_text('{"model": {"cell": ', encoding="utf-8")
    shutil.copytree(run, work / "truncated-weights")
    weights = work / "truncated-weights" / ckpt.BEST
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    vocab = json.loads((run / ckpt.VOCAB).read_text(encoding="utf-8"))["tokens"]
    prime = f"{vocab[5]} {vocab[9]}"
    generate = ["generate", "run", "--prime", prime, "--seed", "1", "--tokens", "15"]
    second = {
        "eval": ["eval", "run", "--split", "test"],
        "generate-1": generate,
        "generate-2": generate,
    }
    second_forked = {
        "eval-json": ["eval", "run", "--split", "test", "--json"],
        "generate-other-seed": [*generate[:-4], "--seed", "2", "--tokens", "15"],
        "generate-batch": [*generate, "--num-samples", "3"],
        **{name: BAD_INPUTS[name][0](work) for name in needs_run},
    }
    results.update(run_batch(second, second_forked, work, env=_env(work / "data")))
    results["work"] = work  # type: ignore[assignment]
    results["prime"] = prime  # type: ignore[assignment]
    return results


def _ok(result: Result) -> Result:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return result


@pytest.mark.slow
def test_version() -> None:
    # Not through the fixture: the fastest command doubles as a smoke test of `python -m`.
    result = shared_runner(cold=True).run(["--version"], Path.cwd(), env=_env(Path.cwd()))
    assert _ok(result).stdout.strip() == f"rnnlab {rnnlab.__version__}"


@pytest.mark.slow
def test_presets_lists_the_built_in_recipes(cli: dict[str, Result]) -> None:
    out = _ok(cli["presets"]).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "synthetic" in names and "word-small" in names


@pytest.mark.slow
def test_train_writes_a_run_and_reports_perplexities(cli: dict[str, Result]) -> None:
    out = _ok(cli["train"]).stdout
    run = cli["work"] / "run"  # type: ignore[operator]
    for name in (ckpt.CONFIG, ckpt.VOCAB, ckpt.BEST, ckpt.TRAINER, ckpt.METRICS):
        assert (run / name).exists(), name
    assert "run directory: run" in out
    assert "stopped: epochs" in out
    assert "true source ppl" in out and "test ppl" in out
    assert sum(line.startswith("sample ") for line in out.splitlines()) == 2
    config = ckpt.load_config(run)
    assert config.data.synthetic_tokens == 30000 and config.train.epochs == 1
    # A successful run says nothing alarming on stderr.
    assert "error" not in cli["train"].stderr


@pytest.mark.slow
def test_eval_reports_the_test_split(cli: dict[str, Result]) -> None:
    out = _ok(cli["eval"]).stdout
    assert out.startswith("test split:") and "ppl" in out
    metrics = json.loads(_ok(cli["eval-json"]).stdout)
    run = cli["work"] / "run"  # type: ignore[operator]
    expected = LanguageModel.load(run).evaluate("test")
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert metrics["tokens"] == expected["tokens"]
    assert metrics["ppl"] == pytest.approx(expected["ppl"], rel=1e-6)


@pytest.mark.slow
def test_generate_is_reproducible_by_seed(cli: dict[str, Result]) -> None:
    first, second = _ok(cli["generate-1"]).stdout, _ok(cli["generate-2"]).stdout
    assert first == second
    assert first.startswith(str(cli["prime"]))
    assert len(first.split()) > len(str(cli["prime"]).split())
    assert _ok(cli["generate-other-seed"]).stdout != first
    # The prime words are in the vocabulary: no warning.
    assert cli["generate-1"].stderr == ""


@pytest.mark.slow
def test_generate_several_samples(cli: dict[str, Result]) -> None:
    out = _ok(cli["generate-batch"]).stdout
    assert [line for line in out.splitlines() if line.startswith("--- sample")] == [
        "--- sample 1", "--- sample 2", "--- sample 3"]


@pytest.mark.slow
def test_train_on_a_small_local_text_file(cli: dict[str, Result]) -> None:
    out = _ok(cli["train-text"]).stdout
    run = cli["work"] / "text-run"  # type: ignore[operator]
    assert "run directory: text-run" in out
    config = ckpt.load_config(run)
    assert config.data.corpus is None and config.data.text_path.endswith("small.txt")
    assert LanguageModel.load(run).evaluate("valid")["tokens"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gives_one_error_line_and_no_traceback(cli: dict[str, Result],
                                                         name: str) -> None:
    result = cli[name]
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rnnlab: error:")
    assert BAD_INPUTS[name][1] in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not list((cli["work"]).glob("runs/*"))  # type: ignore[union-attr]


@pytest.mark.slow
def test_eval_uses_the_runs_threads_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    from rnnlab import cli

    config = rnnlab.resolve_config(preset="synthetic", overrides={
        "train.max_steps": 2, "train.threads": 1, "model.hidden_size": 16,
        "model.embedding_dim": 16, "model.num_layers": 1, "data.synthetic_tokens": 20_000})
    rnnlab.train(config, tmp_path / "run")
    chosen: list[int] = []
    monkeypatch.setattr("rnnlab.runtime.set_threads", chosen.append)
    assert cli.main(["eval", str(tmp_path / "run"), "--split", "valid"]) == 0
    assert cli.main(["eval", str(tmp_path / "run"), "--split", "valid", "--threads", "2"]) == 0
    assert chosen == [1, 2]


def test_resume_says_that_max_minutes_is_the_total_budget(
        train_tiny: Callable[..., rnnlab.TrainResult], capsys: pytest.CaptureFixture[str]
) -> None:
    from rnnlab import cli

    run = train_tiny(train__max_steps=3).run_dir
    elapsed = ckpt.load_trainer_state(run / ckpt.TRAINER)["elapsed"]
    assert cli.main(["train", "--resume", str(run), "--max-minutes", "30", "--samples", "0",
                     "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert f"budget: 30 minutes in total, {elapsed / 60:.1f} already used" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "in total" in " ".join(capsys.readouterr().out.split())


def test_unknown_key_advice_names_a_command_that_lists_every_key(
        capsys: pytest.CaptureFixture[str]) -> None:
    from rnnlab import cli
    from rnnlab.config import SECTIONS

    assert cli.main(["train", "--set", "train.no_such_key=1"]) == 2
    advice = re.search(r"`rnnlab ([^`]+)`", capsys.readouterr().err)
    assert advice is not None
    assert cli.main(advice.group(1).split()) == 0
    out = capsys.readouterr().out
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            assert f"{section}.{field.name}" in out


@pytest.mark.slow
def test_presets_name_prints_a_toml_config_file_of_the_same_recipe(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import resources

    from rnnlab import cli
    from rnnlab.config_resolve import preset_names, read_preset, resolve_config

    for name in preset_names():
        assert cli.main(["presets", name]) == 0
        out = capsys.readouterr().out
        tomllib.loads(out)
        text = (resources.files("rnnlab") / "presets" / f"{name}.toml").read_text("utf-8")
        assert text in out  # the file as written, comments included
        path = tmp_path / f"{name}.toml"
        path.write_text(out, encoding="utf-8")
        # The char presets name no corpus: used, as the README does, on a character corpus.
        level = read_preset(name).get("data", {}).get("level", "word")
        data = {"data.corpus": "tinyshakespeare"} if level == "char" else {}
        assert (resolve_config(config_file=path, overrides=data).to_dict()
                == resolve_config(preset=name, overrides=data).to_dict()), name


def test_char_level_samples_skip_the_vocabularys_unknown_symbol(
        train_tiny: Callable[..., rnnlab.TrainResult], tmp_path: Path) -> None:
    import torch

    from rnnlab import reports

    text = tmp_path / "chars.txt"
    text.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    run = train_tiny(data__text_path=str(text), data__level="char", train__max_steps=3).run_dir
    lm = LanguageModel.load(run)
    assert lm.vocab.level == "char" and lm.vocab.unk is not None
    with torch.no_grad():  # make the unknown symbol by far the most likely output
        lm.model.decoder.bias[lm.vocab.unk_id] = 50.0
    ckpt.save_weights(lm.model, run / ckpt.BEST)
    samples = reports.lm_samples(LanguageModel.load(run), 2)
    assert len(samples) == 2
    assert not any(lm.vocab.unk in line for line in samples)


def test_data_path_prints_the_folder_that_holds_the_corpus_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rnnlab import cli
    from rnnlab.data.corpora import CORPORA

    printed = {}
    for name, corpus in sorted(CORPORA.items()):
        if not corpus.files:
            continue
        assert cli.main(["data", "path", name, "--data-dir", str(tmp_path)]) == 0
        printed[name] = Path(capsys.readouterr().out.strip())
        assert {(tmp_path / f.path).parent for f in corpus.files} == {printed[name]}, name
    assert printed["wikitext2"] == tmp_path / "wikitext-2"


def test_train_reports_from_memory_the_numbers_a_reload_measures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        make_tiny_overrides: Callable[..., dict], make_word_corpus: Callable[..., Path]) -> None:
    from rnnlab import cli
    from rnnlab.training.trainer import Callback

    text = make_word_corpus(tmp_path / "words.txt", lines=300)

    class RemoveText(Callback):  # the report must not need the corpus again
        def on_train_end(self, trainer, result) -> None:
            text.unlink()

    monkeypatch.setattr("rnnlab.commands.train.PlotCurves", RemoveText)
    overrides = make_tiny_overrides(data__text_path=str(text), data__split="0.8,0.1,0.1")
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    capsys.readouterr()
    assert cli.main(["train", *sets, "--out", str(tmp_path / "run"), "--samples", "1"]) == 0
    out = capsys.readouterr().out
    make_word_corpus(text, lines=300)  # the same text again, for the reference measurements
    lm = LanguageModel.load(tmp_path / "run")
    assert f"valid ppl {lm.evaluate('valid')['ppl']:.2f} (best checkpoint)" in out
    test = lm.evaluate("test")
    assert f"test ppl {test['ppl']:.2f} | {test['bits']:.4f} bits per token" in out
    assert sum(line.startswith("sample 1: ") for line in out.splitlines()) == 1
