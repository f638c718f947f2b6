"""int8 inference: generate, eval, serve with the quantized copy of a trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnlab import fast
from rnnlab.api import LanguageModel, TextClassifier
from rnnlab.errors import RnnlabError
from rnnlab.quantize import is_quantized, quantize, size_bytes
from serve_runs import classifier_run, lm_run

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_int8_copy_is_close_smaller_and_leaves_the_float_model_alone(tmp_path: Path) -> None:
    lm = LanguageModel.load(lm_run(tmp_path / "run"))
    q = quantize(lm.model, "int8")
    assert is_quantized(q) and not is_quantized(lm.model)
    ids = torch.tensor([[2, 3, 4, 5, 6]])
    with torch.no_grad(), fast.enabled_as(False):
        exact = lm.model(ids)[0].log_softmax(-1)
        approx = q(ids)[0].log_softmax(-1)
    assert (exact - approx).abs().max() < 0.5  # 8-bit weights: close, not equal
    assert size_bytes(q) < 0.6 * size_bytes(lm.model)


def test_int8_language_model_generates_and_is_evaluated(tmp_path: Path) -> None:
    lm = LanguageModel.load(lm_run(tmp_path / "run"))
    lm.model = quantize(lm.model, "int8")
    with fast.enabled_as(False):
        first = lm.generate("the cat", 8, seed=1)
        assert first == lm.generate("the cat", 8, seed=1)
        assert lm.evaluate_text("the cat sees a dog\na bird runs home\n")["ppl"] > 1


def test_int8_classifier_predicts(tmp_path: Path) -> None:
    for bidirectional in (False, True):
        clf = TextClassifier.load(classifier_run(tmp_path / f"c{bidirectional}",
                                                 bidirectional=bidirectional))
        expected = clf.predict(["the cat runs home"])[0]["probs"]["pos"]
        clf.model = quantize(clf.model, "int8")
        assert clf.predict(["the cat runs home"])[0]["probs"]["pos"] == pytest.approx(
            expected, abs=0.05)


def test_unknown_quantization_is_an_error() -> None:
    with pytest.raises(RnnlabError, match="unknown quantization"):
        quantize(torch.nn.Linear(2, 2), "int4")


def test_cli_generate_and_eval_take_quantize_int8(cli_runner, tmp_path: Path) -> None:
    run = lm_run(tmp_path / "run")
    (tmp_path / "text.txt").write_text("the cat sees a dog\na bird runs home\n")
    done = cli_runner.run(["generate", str(run), "--prime", "the", "--tokens", "5", "--seed",
                           "1", "--quantize", "int8"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("the ")
    done = cli_runner.run(["eval", str(run), "--text", str(tmp_path / "text.txt"), "--json",
                           "--quantize", "int8"], tmp_path)
    assert done.returncode == 0, done.stderr


def test_served_int8_model_says_so(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from rnnlab.serve.registry import Registry

    with fast.enabled_as(False):
        registry = Registry.load([lm_run(tmp_path / "run")], quantization="int8")
        served = registry.pick(None, "lm", "generation")
        assert served.describe()["quantized"]
        steps = served.batcher.generate([2, 3], __import__("rnnlab").SampleConfig(
            max_tokens=4, seed=1))
        registry.close()
    assert len(steps) == 4
