"""`rnnlab plot` and `rnnlab runs`: learning curves and the table of runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import rnnlab
import rnnlab.checkpoint
from rnnlab.errors import RnnlabError
from rnnlab.plots import plot_runs
from rnnlab.tables import format_runs, list_runs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = rnnlab.resolve_config(preset="synthetic", overrides={
        "data.synthetic_tokens": 20000, "model.hidden_size": 32, "model.embedding_dim": 16,
        "train.epochs": 2, "train.log_every": 5, "train.threads": 1,
    })
    rnnlab.train(config, out)
    return out


def test_training_writes_learning_curve_points(tiny_run: Path) -> None:
    lines = (tiny_run / "train_log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 2 and all(r["step"] % 5 == 0 for r in records)
    assert {"loss", "lr", "tokens_per_s", "elapsed"} <= set(records[0])


@pytest.mark.slow
def test_plot_writes_a_png(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = plot_runs([tiny_run, tiny_run], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(tiny_run: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(RnnlabError, match="matplotlib"):
        plot_runs([tiny_run], tmp_path / "x.png")


def test_plot_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match="not found|not a run"):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")


def test_runs_lists_task_data_best_and_steps(tiny_run: Path) -> None:
    rows = list_runs(tiny_run.parent)
    assert len(rows) == 1
    row = rows[0]
    best = min(r["ppl"] for r in rnnlab.checkpoint.read_metrics(tiny_run))
    assert row["task"] == "lm" and row["data"] == "synthetic" and row["best"] == best
    assert row["steps"] > 0 and row["size_mb"] > 0
    assert "synthetic" in format_runs(rows)


def test_runs_reports_a_broken_run_without_failing(tiny_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    rows = list_runs(tmp_path)
    assert rows == [{"run": str(broken), "error": f"{broken / 'config.json'} is corrupted "
                                                  "(not valid JSON)"}]


def test_lm_report_puts_valid_beside_the_baselines_and_then_test() -> None:
    from rnnlab.reports import lm_report

    report = {"valid_ppl": 12.3456, "unigram_ppl": 80.0, "true_ppl": 10.0,
              "entropy_rate_ppl": 9.5, "test": {"ppl": 13.0, "bits": 3.7004}}
    assert lm_report(report).splitlines() == [
        "valid ppl 12.35 (best checkpoint) | unigram baseline 80.00 | true source ppl 10.00 on "
        "valid (entropy rate: 9.50) | model / true = 1.235",
        "test ppl 13.00 | 3.7004 bits per token",
    ]
    assert lm_report({"valid_ppl": 5.0, "unigram_ppl": 6.0}) == (
        "valid ppl 5.00 (best checkpoint) | unigram baseline 6.00")


def test_classifier_report_is_a_table_with_the_confusion_matrix() -> None:
    from rnnlab.reports import classifier_report

    report = {"examples": 1200, "accuracy": 0.75, "loss": 0.5, "macro_f1": 0.7,
              "labels": ["neg", "pos"], "confusion": [[500, 100], [200, 400]],
              "per_class": {"neg": {"precision": 0.7, "recall": 0.8, "f1": 0.75, "support": 600},
                            "pos": {"precision": 0.8, "recall": 0.6, "f1": 0.69, "support": 600}}}
    lines = classifier_report(report, "test").splitlines()
    assert lines[0] == ("test split: 1,200 examples | accuracy 0.7500 | loss 0.5000 | "
                        "macro F1 0.7000")
    assert lines[2].split() == ["neg", "0.7000", "0.8000", "0.7500", "600"]
    assert lines[-1].split() == ["pos", "200", "400"]


def test_config_keys_mark_the_keys_of_one_task() -> None:
    from rnnlab.tables import config_keys

    lines = {line.split()[0]: line for line in config_keys().splitlines()}
    assert lines["data.bptt"].endswith("(lm only)")
    assert lines["model.pooling"].endswith("(classify only)")
    assert "only" not in lines["train.lr"]
