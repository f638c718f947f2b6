"""Checkpoints: exact weight round trips, tied sharing, corrupt files, and no code on load."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from rnnlab import checkpoint as ckpt
from rnnlab.config import ModelConfig, RunConfig
from rnnlab.errors import RnnlabError
from rnnlab.models.language_model import RNNLanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")

V = 29


def _model(seed: int, vocab: int = V, **fields: Any) -> RNNLanguageModel:
    fields = {"embedding_dim": 8, "hidden_size": 12, "num_layers": 2, "dropout": 0.0,
              "tie_weights": True, **fields}
    torch.manual_seed(seed)
    return RNNLanguageModel(ModelConfig(**fields), vocab).eval()


def _tokens() -> torch.Tensor:
    return torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "fields",
    [
        {"tie_weights": True},  # with a projection: hidden 12 != embedding 8
        {"tie_weights": True, "hidden_size": 8},
        {"tie_weights": False, "cell": "gru"},
        {"tie_weights": False, "output": "adaptive", "cutoffs": [10], "hidden_size": 16},
    ],
    ids=["tied-projection", "tied", "untied-gru", "adaptive"],
)
def test_weights_round_trip_gives_identical_logits(tmp_path: Path, fields: dict[str, Any]) -> None:
    source = _model(seed=0, **fields)
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(source, path, {"step": "5"})
    target = _model(seed=1, **fields)  # different initial weights, so loading must change them
    assert not torch.equal(target(_tokens())[0], source(_tokens())[0])
    ckpt.load_weights(target, path)
    assert torch.equal(target(_tokens())[0], source(_tokens())[0])
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_tied_sharing_survives_the_round_trip(tmp_path: Path) -> None:
    source = _model(seed=0)
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(source, path)
    # The shared matrix is stored once (safetensors refuses aliased tensors anyway).
    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
    assert "embedding.weight" in header and "decoder.weight" not in header
    target = _model(seed=1)
    ckpt.load_weights(target, path)
    assert target.decoder.weight is target.embedding.weight
    assert target.decoder.weight.data_ptr() == target.embedding.weight.data_ptr()
    assert torch.equal(target.decoder.weight, source.embedding.weight)


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    ckpt.save_weights(_model(seed=0), tmp_path / "model.safetensors")
    ckpt.save_trainer_state({"step": 1}, tmp_path / ckpt.TRAINER)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", ckpt.TRAINER]


def test_weights_reach_the_disk_only_through_the_atomic_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A library writing files of its own (safetensors 0.8's save_file goes through a
    # ``.tmpXXXXXX`` file) would leave, after a crash, a file that the resume cannot recognise.
    written: dict[str, bytes] = {}
    monkeypatch.setattr(ckpt, "atomic_write_bytes",
                        lambda path, data: written.__setitem__(Path(path).name, data))
    ckpt.save_weights(_model(seed=0), tmp_path / "model.safetensors", {"format": "1"})
    assert list(tmp_path.iterdir()) == []
    assert list(written) == ["model.safetensors"]
    monkeypatch.undo()
    (tmp_path / "model.safetensors").write_bytes(written["model.safetensors"])
    loaded = ckpt.read_weights(tmp_path / "model.safetensors")
    assert torch.equal(loaded["embedding.weight"], _model(seed=0).embedding.weight)


def _valid_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.safetensors"
    ckpt.save_weights(_model(seed=0), path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda good: good[: len(good) // 2],  # truncated in the tensor data
        lambda good: good[:20],  # truncated in the header
        lambda good: b"",
        lambda good: b"this is not a safetensors file at all " * 20,
        lambda good: bytes(range(256)) * 8,
    ],
    ids=["truncated-data", "truncated-header", "empty", "text", "binary-garbage"],
)
def test_corrupt_weights_raise_rnnlab_error(tmp_path: Path, corrupt: Any) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(corrupt(_valid_bytes(tmp_path)))
    with pytest.raises(RnnlabError, match="corrupted|not a safetensors"):
        ckpt.load_weights(_model(seed=1), path)


def test_missing_weights_file_raises_rnnlab_error(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match="not found"):
        ckpt.load_weights(_model(seed=1), tmp_path / "nope.safetensors")


def test_weights_of_another_vocabulary_size_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    for tie in (True, False):
        ckpt.save_weights(_model(seed=0, vocab=V, tie_weights=tie), path)
        with pytest.raises(RnnlabError, match="vocabulary"):
            ckpt.load_weights(_model(seed=1, vocab=V + 3, tie_weights=tie), path)


@pytest.mark.parametrize(
    "fields", [{"hidden_size": 16}, {"num_layers": 1}, {"cell": "gru"}, {"tie_weights": False}],
)
def test_weights_of_another_architecture_are_refused(tmp_path: Path, fields: dict) -> None:
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(_model(seed=0), path)
    with pytest.raises(RnnlabError, match="does not fit|shape"):
        ckpt.load_weights(_model(seed=1, **fields), path)


# --- trainer state -------------------------------------------------------------------------


class _CreatesMarker:
    """Unpickling this would run ``open(marker, "w")``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_trainer_state_round_trip(tmp_path: Path) -> None:
    state = {"step": 12, "rng": {"torch": torch.get_rng_state()}, "running": [1.5, 3, 40],
             "best_value": None, "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}}}
    ckpt.save_trainer_state(state, tmp_path / ckpt.TRAINER)
    loaded = ckpt.load_trainer_state(tmp_path / ckpt.TRAINER)
    assert loaded["step"] == 12 and loaded["running"] == [1.5, 3, 40]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], torch.ones(3))


@pytest.mark.parametrize("via", ["torch.save", "pickle"])
def test_malicious_trainer_state_is_refused_without_running_code(tmp_path: Path, via: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"step": 1, "evil": _CreatesMarker(marker)}
    path = tmp_path / ckpt.TRAINER
    if via == "torch.save":
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # torch.load's own protocol
    # The payload is real: an unrestricted load would create the marker.
    if via == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(RnnlabError, match="refused|corrupted"):
        ckpt.load_trainer_state(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage" * 10], ids=["empty", "garbage"])
def test_corrupt_trainer_state_raises_rnnlab_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / ckpt.TRAINER
    path.write_bytes(content)
    with pytest.raises(RnnlabError):
        ckpt.load_trainer_state(path)


def test_missing_trainer_state_raises_rnnlab_error(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match="nothing to resume"):
        ckpt.load_trainer_state(tmp_path / ckpt.TRAINER)


# --- config, metrics -----------------------------------------------------------------------


def test_config_round_trip(tmp_path: Path) -> None:
    config = RunConfig()
    config.model.hidden_size = 77
    config.train.lr = 0.5
    ckpt.save_config(config, tmp_path)
    assert ckpt.load_config(tmp_path) == config


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"model": {"nope": 1}}'])
def test_corrupt_config_raises_rnnlab_error(tmp_path: Path, content: str) -> None:
    (tmp_path / ckpt.CONFIG).write_text(content, encoding="utf-8")
    with pytest.raises(RnnlabError):
        ckpt.load_config(tmp_path)


def test_load_config_of_a_missing_run_raises_rnnlab_error(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match="not found"):
        ckpt.load_config(tmp_path / "nope")
    with pytest.raises(RnnlabError, match="not a run directory"):
        ckpt.load_config(tmp_path)


def test_metrics_ignore_a_torn_last_line(tmp_path: Path) -> None:
    ckpt.append_metrics(tmp_path, {"step": 1, "loss": 2.0})
    ckpt.append_metrics(tmp_path, {"step": 2, "loss": 1.5})
    with open(tmp_path / ckpt.METRICS, "a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "lo')  # a crash in the middle of a write
    assert ckpt.read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
