"""`rnnlab plot` and `rnnlab runs`: learning curves and the table of runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import rnnlab
import rnnlab.checkpoint
from rnnlab.errors import RnnlabError
from rnnlab.reports import format_runs, list_runs, plot_runs


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
