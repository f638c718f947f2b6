"""ONNX export: the graph run by onnxruntime gives PyTorch's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is missing")
pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")

from rnnlab.api import LanguageModel, TextClassifier  # noqa: E402
from rnnlab.errors import RnnlabError  # noqa: E402
from rnnlab.export.onnx import export_run  # noqa: E402
from serve_runs import classifier_run, lm_run  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_one_step_decoder_matches_pytorch_step_by_step(tmp_path: Path, cell: str) -> None:
    run = lm_run(tmp_path / "run", cell=cell)
    out = export_run(run, tmp_path / "onnx")
    assert json.loads((out / "meta.json").read_text())["cell"] == cell
    assert (out / "vocab.json").exists()
    session = ort.InferenceSession(str(out / "model.onnx"))
    lm = LanguageModel.load(run)
    ids = torch.tensor([[2, 5, 3, 7, 1, 4], [6, 6, 2, 9, 3, 2]])  # two rows: batch 2
    with torch.no_grad():
        logits, _ = lm.model(ids)
    expected = logits.log_softmax(dim=-1).numpy()  # (B, T, V)
    shape = (2, 2, 24)  # layers, batch, hidden
    feeds = {"h": np.zeros(shape, np.float32)}
    if cell == "lstm":
        feeds["c"] = np.zeros(shape, np.float32)
    for t in range(ids.shape[1]):
        log_probs, *state = session.run(None, {"token": ids[:, t].numpy(), **feeds})
        np.testing.assert_allclose(log_probs, expected[:, t], atol=1e-4)
        feeds = dict(zip(feeds, state, strict=True))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_graph_matches_pytorch_probabilities(tmp_path: Path,
                                                        bidirectional: bool) -> None:
    run = classifier_run(tmp_path / "run", bidirectional=bidirectional)
    out = export_run(run, tmp_path / "onnx")
    assert json.loads((out / "meta.json").read_text())["labels"] == ["neg", "pos"]
    session = ort.InferenceSession(str(out / "model.onnx"))
    clf = TextClassifier.load(run)
    tokens = torch.tensor([[2, 3, 4, 5, 6, 7, 8], [3, 9, 2, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([7, 3, 1])
    with torch.no_grad():
        expected = clf.model(tokens, lengths).softmax(dim=-1).numpy()
    (probs,) = session.run(None, {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_an_int8_model_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match="int8 model cannot be exported to ONNX"):
        export_run(lm_run(tmp_path / "run"), tmp_path / "onnx", quantization="int8")


def test_export_never_overwrites_a_graph(tmp_path: Path) -> None:
    run = lm_run(tmp_path / "run")
    export_run(run, tmp_path / "onnx")
    with pytest.raises(RnnlabError, match="already exists"):
        export_run(run, tmp_path / "onnx")


@pytest.mark.slow
def test_the_cli_exports_and_refuses_int8(cli_runner, tmp_path: Path) -> None:
    run = lm_run(tmp_path / "run")
    done = cli_runner.run(["export", str(run), "--out", str(tmp_path / "onnx")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "onnx" / "model.onnx").exists()
    refused = cli_runner.run(["export", str(run), "--out", str(tmp_path / "q"),
                              "--quantize", "int8"], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("rnnlab: error: an int8 model cannot")
