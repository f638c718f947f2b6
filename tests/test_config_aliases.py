"""Config keys renamed since runs were written: the old spellings still load and resolve."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.config import FORMAT_VERSION, RunConfig
from rnnlab.config_resolve import apply_overrides, canonical_key, resolve_config


def test_an_old_run_config_json_with_bare_file_keys_loads_into_the_path_fields(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    raw = RunConfig().to_dict()
    raw["data"] = {"corpus": None, "train": "train.txt", "valid": "valid.txt", "test": "test.txt",
                   "text": None, "level": "word"}
    (run / ckpt.CONFIG).write_text(json.dumps(raw), encoding="utf-8")
    config = ckpt.load_config(run)
    assert raw["format_version"] == FORMAT_VERSION
    assert (config.data.train_path, config.data.valid_path, config.data.test_path,
            config.data.text_path) == ("train.txt", "valid.txt", "test.txt", None)


@pytest.mark.parametrize(("old", "new"), [("data.train", "train_path"),
                                          ("data.valid", "valid_path"),
                                          ("data.test", "test_path"),
                                          ("data.text", "text_path"),
                                          ("text", "text_path")])
def test_an_override_with_an_old_file_key_sets_the_path_field(old: str, new: str) -> None:
    config = RunConfig()
    apply_overrides(config, {old: "a.txt"}, source="--set")
    assert getattr(config.data, new) == "a.txt"
    assert canonical_key(old) == f"data.{new}"


def test_a_config_file_with_old_file_keys_resolves(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text('[data]\ntrain = "t.txt"\nvalid = "v.txt"\n', encoding="utf-8")
    config = resolve_config(config_file=path)
    assert config.data.corpus is None  # local files still replace the preset's corpus
    assert (config.data.train_path, config.data.valid_path) == ("t.txt", "v.txt")


@pytest.mark.slow
def test_a_run_whose_config_json_has_the_old_file_keys_resumes(
        tmp_path: Path, word_corpus: Path, train_tiny: Callable[..., rnnlab.TrainResult]) -> None:
    run = train_tiny(data__text_path=str(word_corpus), train__max_steps=3).run_dir
    raw = json.loads((run / ckpt.CONFIG).read_text(encoding="utf-8"))
    raw["data"]["text"] = raw["data"].pop("text_path")
    for name in ("train", "valid", "test"):
        raw["data"][name] = raw["data"].pop(f"{name}_path")
    (run / ckpt.CONFIG).write_text(json.dumps(raw), encoding="utf-8")
    resumed = rnnlab.resume(run, {"train.max_steps": 5})
    assert resumed.steps == 5
    assert ckpt.load_config(run).data.text_path == str(word_corpus)
