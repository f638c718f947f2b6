"""Config: precedence of the layers, strict keys and types, validation, and the JSON form."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from rnnlab.config import FORMAT_VERSION, SECTIONS, RunConfig
from rnnlab.config_resolve import apply_overrides, preset_names, read_preset, resolve_config
from rnnlab.errors import RnnlabError


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _preset(name: str) -> str:
    # Presets are being added while these tests are written; use one only where it exists.
    if name not in preset_names():
        pytest.skip(f"preset {name} not present")
    return name


def test_defaults_validate() -> None:
    RunConfig().validate()


def test_precedence_preset_then_file_then_overrides(tmp_path: Path) -> None:
    preset = _preset("word-medium")  # sgd, lr 20, 40 epochs: all unlike the dataclass defaults
    assert read_preset(preset)["train"]["optimizer"] == "sgd"
    config_file = _toml(tmp_path, "[train]\nlr = 10.0\nepochs = 30\n")
    config = resolve_config(preset=preset, config_file=config_file, overrides={"train.epochs": 5})
    assert config.preset == preset
    assert config.train.optimizer == "sgd"  # only the preset sets it
    assert config.train.lr == 10.0  # the file beats the preset
    assert config.train.epochs == 5  # overrides beat the file
    assert config.train.seed == RunConfig().train.seed  # nobody sets it: the default
    assert config.model.hidden_size == read_preset(preset)["model"]["hidden_size"]


def test_preset_named_in_the_config_file(tmp_path: Path) -> None:
    preset = _preset("word-medium")
    config = resolve_config(config_file=_toml(tmp_path, f'preset = "{preset}"\n'))
    assert config.preset == preset
    assert config.train.optimizer == "sgd"


def test_explicit_preset_beats_the_files_preset_and_is_recorded(tmp_path: Path) -> None:
    explicit, in_file = _preset("word-small"), _preset("word-medium")
    config_file = _toml(tmp_path, f'preset = "{in_file}"\n')
    config = resolve_config(preset=explicit, config_file=config_file)
    # The name recorded in config.json must be the preset actually loaded.
    assert config.preset == explicit
    assert config.model.hidden_size == read_preset(explicit)["model"]["hidden_size"]


def test_config_file_may_be_a_copy_of_a_preset(tmp_path: Path) -> None:
    # Presets carry a free-text description; a copied preset must be accepted as a config file.
    text = 'description = "my recipe"\nformat_version = 1\n[model]\nhidden_size = 64\n'
    config = resolve_config(preset=_preset("synthetic"), config_file=_toml(tmp_path, text))
    assert config.model.hidden_size == 64


def test_strings_from_the_command_line_are_parsed() -> None:
    config = resolve_config(
        preset=_preset("synthetic"),
        overrides={"train.lr": "3e-3", "data.bptt": "50", "model.tie_weights": "false",
                   "data.split": "0.8,0.1,0.1", "seed": "7"},
    )
    assert config.train.lr == 3e-3
    assert config.data.bptt == 50
    assert config.model.tie_weights is False
    assert config.data.split == [0.8, 0.1, 0.1]
    assert config.train.seed == 7  # a bare key that names one field


def test_unknown_key() -> None:
    with pytest.raises(RnnlabError, match="unknown config key 'model.hiden_size'"):
        resolve_config(preset=_preset("synthetic"), overrides={"model.hiden_size": 10})


def test_unknown_key_in_config_file_names_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[train]\nlearning_rate = 0.1\n")
    with pytest.raises(RnnlabError, match="learning_rate") as info:
        resolve_config(preset=_preset("synthetic"), config_file=path)
    assert str(path) in str(info.value)


def test_unknown_section() -> None:
    with pytest.raises(RnnlabError, match="unknown config key"):
        RunConfig.from_dict({"optim": {"lr": 1.0}})


@dataclasses.dataclass
class _ExtraSection:
    lr: float = 1.0  # the same name as train.lr


def test_ambiguous_bare_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # No field name is shared by two sections today, so add a section that shares one.
    monkeypatch.setitem(SECTIONS, "extra", _ExtraSection)
    with pytest.raises(RnnlabError, match="ambiguous") as info:
        apply_overrides(RunConfig(), {"lr": 0.1}, source="--set")
    assert "train.lr" in str(info.value) and "extra.lr" in str(info.value)


def test_bare_key_that_names_one_field() -> None:
    config = RunConfig()
    apply_overrides(config, {"hidden_size": "64", "train": "a.txt"}, source="--set")
    assert config.model.hidden_size == 64
    assert config.data.train_path == "a.txt"  # `train` is a data field, not the section


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("data.bptt", "abc", "expected int"),
        ("data.bptt", 1.5, "expected int"),
        ("data.bptt", "1.5", "expected int"),
        ("train.epochs", True, "expected int"),
        ("model.tie_weights", "maybe", "expected bool"),
        ("model.tie_weights", 1.0, "expected bool"),
        ("train.lr", "fast", "expected float"),
        ("model.cell", 3, "expected str"),
        ("data.split", "0.9,x", "expected float"),
        ("data.split", 0.9, "expected a list"),
    ],
)
def test_wrong_types(key: str, value: Any, expected: str) -> None:
    with pytest.raises(RnnlabError, match=expected) as info:
        apply_overrides(RunConfig(), {key: value}, source="--set")
    assert key in str(info.value)  # the message says which key was wrong


def test_integral_float_is_accepted_for_an_int() -> None:
    config = RunConfig()
    apply_overrides(config, {"data.bptt": 40.0}, source="test")
    assert config.data.bptt == 40 and isinstance(config.data.bptt, int)


@pytest.mark.parametrize(
    "override",
    [
        {"model.hidden_size": 0},
        {"model.num_layers": -1},
        {"data.batch_size": 0},
        {"data.bptt": -5},
        {"train.lr": 0.0},
        {"train.epochs": 0},
        {"data.max_vocab": -1},
        {"model.dropout": 1.0},
        {"model.cell": "transformer"},
        {"data.split": [0.5, 0.0, 0.5]},
        {"data.split": [0.5, 0.3]},
        {"train.lr_decay": 0.0},
    ],
)
def test_invalid_values(override: dict[str, Any]) -> None:
    (key,) = override
    with pytest.raises(RnnlabError, match=key.replace(".", r"\.")):
        resolve_config(preset=_preset("synthetic"), overrides=override)


def test_format_version_mismatch() -> None:
    raw = RunConfig().to_dict()
    raw["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(RnnlabError, match="format version"):
        RunConfig.from_dict(raw, source="run/config.json")


def test_format_version_mismatch_in_config_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, f"format_version = {FORMAT_VERSION + 1}\n")
    with pytest.raises(RnnlabError, match="format version"):
        resolve_config(preset=_preset("synthetic"), config_file=path)


def test_to_dict_from_dict_round_trip_through_json() -> None:
    config = resolve_config(
        preset=_preset("synthetic"),
        overrides={"model.cell": "gru", "data.split": [0.8, 0.2], "train.max_minutes": 1.5},
    )
    raw = json.loads(json.dumps(config.to_dict()))  # as written to and read from config.json
    assert raw["format_version"] == FORMAT_VERSION
    assert RunConfig.from_dict(raw) == config


def test_partial_dict_keeps_defaults() -> None:
    config = RunConfig.from_dict({"model": {"cell": "gru"}})
    assert config.model.cell == "gru"
    assert config.model.hidden_size == RunConfig().model.hidden_size


def test_local_files_clear_the_default_corpus() -> None:
    config = resolve_config(overrides={"data.train_path": "train.txt",
                                       "data.valid_path": "valid.txt"})
    assert config.data.corpus is None
    assert config.data.train_path == "train.txt"
    # Local word-level files get the word-level recipe, not the synthetic corpus's.
    assert config.preset != "synthetic"


def test_local_text_clears_the_presets_corpus(tmp_path: Path) -> None:
    preset = _preset("synthetic")
    assert read_preset(preset)["data"]["corpus"] == "synthetic"
    config = resolve_config(preset=preset, config_file=_toml(tmp_path, '[data]\ntext = "a.txt"\n'))
    assert config.data.corpus is None and config.data.text_path == "a.txt"


def test_corpus_named_together_with_files_is_an_error() -> None:
    with pytest.raises(RnnlabError, match="exactly one data source"):
        resolve_config(
            preset=_preset("synthetic"),
            overrides={"data.corpus": "ptb", "data.train_path": "train.txt"},
        )


def test_corpus_none_clears_it() -> None:
    with pytest.raises(RnnlabError, match="exactly one data source"):
        resolve_config(preset=_preset("synthetic"), overrides={"data.corpus": "none"})


def test_missing_and_invalid_config_files(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match="not found"):
        resolve_config(config_file=tmp_path / "absent.toml")
    with pytest.raises(RnnlabError, match="not valid TOML"):
        resolve_config(config_file=_toml(tmp_path, "[model\n"))


def test_unknown_preset() -> None:
    with pytest.raises(RnnlabError, match="unknown preset 'no-such-preset'"):
        resolve_config(preset="no-such-preset")


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_resolves(name: str) -> None:
    config = resolve_config(preset=name)
    assert config.preset == name


@pytest.mark.parametrize(
    "override",
    [
        {"train.lr": "nan"},
        {"train.lr": "inf"},
        {"train.max_minutes": "nan"},
        {"train.clip": "-inf"},
        {"model.dropout": "nan"},
        {"data.valid_fraction": "nan"},
        {"data.split": "nan,0.5,0.5"},
    ],
)
def test_non_finite_numbers_are_rejected_naming_the_key(override: dict[str, Any]) -> None:
    (key,) = override
    with pytest.raises(RnnlabError, match=rf"{key.replace('.', '[.]')}.*finite"):
        resolve_config(preset=_preset("synthetic"), overrides=override)


def test_non_finite_numbers_are_rejected_from_files_and_the_python_api(tmp_path: Path) -> None:
    with pytest.raises(RnnlabError, match=r"train\.lr.*finite"):
        resolve_config(preset=_preset("synthetic"),
                       config_file=_toml(tmp_path, "[train]\nlr = nan\n"))
    config = RunConfig()
    config.train.weight_decay = float("inf")
    with pytest.raises(RnnlabError, match=r"train\.weight_decay.*finite"):
        config.validate()


@pytest.mark.parametrize("layer, message", [
    ({"overrides": {"task": "classify", "data.bptt": "8"}},
     "--set: data.bptt is for --task lm only, and this run's task is classify"),
    ({"overrides": {"model.pooling": "mean"}},
     "--set: model.pooling is for --task classify only, and this run's task is lm"),
    ({"preset": "imdb-lm", "overrides": {"task": "classify"}},
     "preset imdb-lm: model.output is for --task lm only"),
])
def test_a_key_set_for_the_other_task_is_refused(layer: dict[str, Any], message: str) -> None:
    with pytest.raises(RnnlabError, match=re.escape(message)):
        resolve_config(**layer)


def test_a_config_file_setting_the_other_tasks_key_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "clf.toml"
    path.write_text('task = "classify"\n[data]\nvariable_bptt = true\n', encoding="utf-8")
    with pytest.raises(RnnlabError, match=f"{re.escape(str(path))}: data.variable_bptt is for"):
        resolve_config(config_file=path)


def test_the_other_tasks_keys_at_their_default_or_unused_values_resolve() -> None:
    # A classifier ties no weights, so tie_weights = false (as the imdb presets say) is no error.
    config = resolve_config(overrides={"task": "classify", "model.tie_weights": "false",
                                       "data.bptt": "35"})
    assert config.task == "classify" and config.model.tie_weights is False


def test_a_runs_config_json_loads_whatever_its_tasks_keys() -> None:
    # Run directories written before the task check keep loading.
    config = RunConfig.from_dict({"task": "classify", "data": {"bptt": 8},
                                  "model": {"output": "adaptive", "tie_weights": False}})
    assert config.data.bptt == 8 and config.model.output == "adaptive"
