"""Dynamic evaluation: no token scored by weights that saw it, lr 0 is static evaluation, the
trained weights come back, every cell and output layer adapts, statistics and tuning are kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rnnlab import cli
from rnnlab.api import LanguageModel
from rnnlab.cli_parser import adaptive_options, build_parser
from rnnlab.config import ModelConfig, RunConfig
from rnnlab.errors import RnnlabError
from rnnlab.lm import adaptive
from rnnlab.lm.adaptive import adaptive_nll, cached_stats
from rnnlab.lm.data import load_lm_data
from rnnlab.lm.dynamic import STATS_FILE, DynamicSettings, gradient_stats
from rnnlab.lm.evaluation import evaluate_stream
from rnnlab.models.language_model import RNNLanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")

V = 30


def _model(cell: str = "lstm", output: str = "softmax", seed: int = 0) -> RNNLanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(cell=cell, embedding_dim=8, hidden_size=12, num_layers=2, dropout=0.3,
                         tie_weights=False, output=output, cutoffs=[10])
    return RNNLanguageModel(config, V)


def _stream(n: int = 200, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def _repeated(times: int = 6) -> torch.Tensor:
    return _stream(40, seed=3).repeat(times)


def _settings(lr: float = 3e-2, decay: float = 0.0) -> DynamicSettings:
    return DynamicSettings(lr=lr, decay=decay, segment=7)


@pytest.fixture(scope="module")
def model_and_stats() -> tuple[RNNLanguageModel, dict[str, torch.Tensor]]:
    model = _model()
    return model, gradient_stats(model, _stream(300, seed=2), segment=7)


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_lr_zero_scores_exactly_as_static_evaluation(model_and_stats, decay: float) -> None:
    model, stats = model_and_stats
    ids = _stream()
    static = adaptive_nll(model, ids, segment=7, per_token=True)
    frozen = adaptive_nll(model, ids, dynamic=_settings(lr=0.0, decay=decay), stats=stats,
                          per_token=True)
    assert torch.equal(frozen["token_nll"], static["token_nll"])
    assert frozen["total"] == static["total"]
    total, count = evaluate_stream(model, ids, 1, 7)
    assert count == static["count"] and static["total"] == pytest.approx(total, rel=1e-5)


def test_no_token_is_scored_by_weights_that_saw_it(model_and_stats) -> None:
    model, stats = model_and_stats
    prefix = 53  # not a multiple of the segment: the cut falls inside a segment
    a, b = _stream(), _stream()
    b[prefix + 1 :] = (b[prefix + 1 :] + 1) % V  # same tokens up to `prefix`, then different
    nll_a = adaptive_nll(model, a, dynamic=_settings(), stats=stats, per_token=True)["token_nll"]
    nll_b = adaptive_nll(model, b, dynamic=_settings(), stats=stats, per_token=True)["token_nll"]
    assert torch.equal(nll_a[:prefix], nll_b[:prefix])  # targets 1..prefix: the shared text
    assert not torch.equal(nll_a[prefix:], nll_b[prefix:])


def test_repeated_text_gains_only_after_its_first_reading(model_and_stats) -> None:
    model, stats = model_and_stats
    ids = _repeated()
    static = adaptive_nll(model, ids, segment=7, per_token=True)["token_nll"]
    dynamic = adaptive_nll(model, ids, dynamic=_settings(), stats=stats,
                           per_token=True)["token_nll"]
    # The first segment is scored by the trained weights; only later ones by adapted weights.
    assert torch.allclose(dynamic[:7], static[:7], atol=1e-5)
    assert dynamic[-40:].mean() < static[-40:].mean() - 0.1


def test_the_trained_weights_are_restored(model_and_stats) -> None:
    model, stats = model_and_stats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adaptive_nll(model, _repeated(), dynamic=_settings(decay=0.1), stats=stats)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    class Stop(Exception):
        pass

    def failing(total: int, desc: str):
        class Bar:
            n = 0

            def update(self, n: int = 1) -> None:
                self.n += n
                if self.n == 3:
                    raise Stop

            def close(self) -> None:
                pass
        return Bar()

    with pytest.raises(Stop):
        adaptive_nll(model, _repeated(), dynamic=_settings(), stats=stats, progress=failing)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("cell,output", [("lstm", "adaptive"), ("gru", "softmax"),
                                         ("rnn_tanh", "softmax")])
def test_every_cell_and_output_layer_adapts(cell: str, output: str) -> None:
    model = _model(cell, output)
    stats = gradient_stats(model, _stream(150, seed=2), segment=7)
    ids = _repeated()
    static = adaptive_nll(model, ids, segment=7)["total"]
    assert adaptive_nll(model, ids, dynamic=_settings(lr=3e-3), stats=stats)["total"] < static


def test_statistics_are_stored_and_recomputed_for_other_weights(tmp_path: Path,
                                                                monkeypatch) -> None:
    model, train = _model(), _stream(150, seed=2)
    first = cached_stats(model, train, 7, tmp_path)
    assert (tmp_path / STATS_FILE).is_file()
    calls = []
    real = adaptive.gradient_stats
    monkeypatch.setattr(adaptive, "gradient_stats",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    again = cached_stats(model, train, 7, tmp_path)
    assert calls == [] and all(torch.equal(first[k], again[k]) for k in first)
    cached_stats(model, train, 9, tmp_path)  # another segment length: other statistics
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    cached_stats(model, train, 9, tmp_path)  # other weights
    assert calls == [1, 1]


def _run(tmp_path: Path) -> Path:
    """A run directory with an untrained tiny model over a text that repeats itself."""
    lines = ["the cat sees the dog", "a bird hears the old man", "my friend likes the river"]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines * 60) + "\n", encoding="utf-8")
    config = RunConfig()
    config.data.corpus, config.data.text_path, config.data.split = None, str(text), [0.6, 0.2, 0.2]
    config.model = ModelConfig(embedding_dim=8, hidden_size=12, num_layers=1, dropout=0.0,
                               tie_weights=False)
    vocab = load_lm_data(config.data).vocab
    torch.manual_seed(0)
    LanguageModel(RNNLanguageModel(config.model, len(vocab)), vocab, config).save(tmp_path / "r")
    return tmp_path / "r"


def test_tuning_records_settings_that_the_test_split_then_uses(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.setattr(adaptive, "EPS_GRID", [1e-3, 1e-2])
    monkeypatch.setattr(adaptive, "DECAY_GRID", [1e-2])
    run = _run(tmp_path)
    lm = LanguageModel.load(run)
    tuned = lm.evaluate("valid", dynamic=True, tune=True)
    record = json.loads((run / "adaptive.json").read_text())["dynamic"]
    assert record["dynamic"]["lr"] > 0 and tuned["settings"] == "tuned"
    assert record["dynamic"]["eps"] in (1e-3, 1e-2)  # searched, with lr around it
    assert {"lr", "eps", "decay"} <= set(record["trials"][0])
    assert record["valid_ppl"] == tuned["ppl"] < lm.evaluate("valid", batch_size=1)["ppl"]
    test = lm.evaluate("test", dynamic=True)
    assert test["settings"] == "recorded" and test["dynamic"] == record["dynamic"]
    given = lm.evaluate("test", dynamic={"lr": 0.0})
    assert given["dynamic"]["lr"] == 0.0
    assert given["ppl"] == pytest.approx(lm.evaluate("test", batch_size=1)["ppl"], rel=1e-5)


@pytest.mark.parametrize("argv", [["--dynamic", "--tune", "--split", "test"],
                                  ["--cache", "--tune", "--text", "f.txt"], ["--tune"],
                                  ["--decay", "0.1"], ["--dynamic", "--batch-size", "4"]])
def test_tuning_outside_the_valid_split_is_refused(argv: list[str]) -> None:
    args = build_parser().parse_args(["eval", "RUN", *argv])
    with pytest.raises(RnnlabError):
        adaptive_options(args)


def test_cli_dynamic_eval_prints_its_settings(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path)
    assert cli.main(["eval", str(run), "--dynamic", "--dynamic-lr", "0.01", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adaptive"] == "dynamic" and out["dynamic"]["lr"] == 0.01
    assert cli.main(["eval", str(run), "--dynamic", "--tune", "--split", "test"]) == 2
    assert "valid split only" in capsys.readouterr().err


def test_both_methods_together_use_the_settings_each_was_tuned_with(tmp_path: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.setattr(adaptive, "EPS_GRID", [1e-2])
    monkeypatch.setattr(adaptive, "DECAY_GRID", [1e-2])
    lm = LanguageModel.load(_run(tmp_path))
    dynamic = lm.evaluate("valid", dynamic=True, tune=True)["dynamic"]
    both = lm.evaluate("test", dynamic=True, cache=True)
    assert both["settings"] == "recorded" and both["dynamic"] == dynamic


def test_a_diverging_evaluation_is_an_error_not_an_infinite_perplexity(tmp_path: Path) -> None:
    lm = LanguageModel.load(_run(tmp_path))
    with pytest.raises(RnnlabError, match="diverged"):
        lm.evaluate("test", dynamic={"lr": 1e30})
