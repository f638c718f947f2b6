"""Reading configs: presets, TOML files, ``--set`` overrides, and the resolved :class:`RunConfig`.

Precedence, lowest first: dataclass defaults < ``--preset`` < ``--config FILE.toml`` <
``--set section.key=value`` (the CLI's own flags such as ``--epochs`` are sugar for ``--set``).
Unknown keys and values of the wrong type are errors, and the fully resolved config is written
into every run directory as ``config.json`` with a format version.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from rnnlab.config import FORMAT_VERSION, SECTIONS, RunConfig
from rnnlab.errors import RnnlabError

# Keys that mean something for one task only, with that task.
TASK_ONLY: dict[str, str] = {
    "model.tie_weights": "lm", "model.input": "lm", "model.output": "lm", "model.cutoffs": "lm",
    "data.bptt": "lm", "data.variable_bptt": "lm", "data.synthetic_tokens": "lm",
    "data.unit": "lm", "model.weight_drop": "lm", "model.hidden_sizes": "lm",
    "train.ar_alpha": "lm", "train.tar_beta": "lm", "train.scale_lr_by_window": "lm",
    "model.bidirectional": "classify", "model.pooling": "classify",
    "data.text_field": "classify", "data.label_field": "classify", "data.max_length": "classify",
    "data.valid_fraction": "classify",
}
# Values besides the default that still mean "unused" for the other task: a classifier ties no
# weights, so `tie_weights = false` (as the imdb presets write it) is what it does anyway.
_INERT: dict[str, Any] = {"model.tie_weights": False}
# Classification keys that a line-by-line language model reads too (for its labelled lines).
LINE_KEYS = ("data.text_field", "data.label_field")
# Keys renamed since runs were written (old -> new): a run's config.json, a preset or config
# file, or a `--set` that uses the old spelling still means the same field.
ALIASES: dict[str, str] = {
    "data.train": "data.train_path", "data.valid": "data.valid_path",
    "data.test": "data.test_path", "data.text": "data.text_path",
    "train": "data.train_path", "valid": "data.valid_path", "test": "data.test_path",
    "text": "data.text_path",
}


def check_task_fields(config: RunConfig, named: dict[str, str]) -> None:
    """Refuse a value set for the other task's keys (``named``: key -> where it was set).

    Only a value that differs from the field's default counts, so that a preset copied whole
    into a config file, or a default written out, stays valid for either task.
    """
    for key, source in named.items():
        owner = TASK_ONLY.get(key)
        if owner is None or owner == config.task:
            continue
        if key in LINE_KEYS and config.data.unit == "line":
            continue
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        default = getattr(SECTIONS[section](), name)
        if value != default and not (key in _INERT and value == _INERT[key]):
            raise RnnlabError(f"{source}: {key} is for --task {owner} only, and this run's "
                              f"task is {config.task}")


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> RunConfig:
    """A config from a (possibly partial) nested dict, e.g. a run's ``config.json``."""
    config = RunConfig()
    apply_overrides(config, _flatten(_strip_header(raw, source)), source=source)
    return config


def _strip_header(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of ``raw`` without ``format_version`` (checked) and ``description`` (free text)."""
    raw = dict(raw)
    version = raw.pop("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise RnnlabError(
            f"{source}: config format version {version} is not supported "
            f"(this rnnlab reads version {FORMAT_VERSION})"
        )
    raw.pop("description", None)
    return raw


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and not prefix and key in SECTIONS:
            flat.update(_flatten(value, f"{key}."))
        else:
            flat[prefix + key] = value
    return flat


def apply_overrides(config: RunConfig, values: dict[str, Any], *, source: str) -> None:
    """Set ``section.key`` (or a bare ``key`` that names one field) values on ``config``.

    String values are parsed according to the field's type, so ``--set train.lr=3e-3`` works.
    """
    for key, value in values.items():
        section, name = _resolve_key(key, source)
        target = config if section is None else getattr(config, section)
        hint = typing.get_type_hints(type(target))[name]
        setattr(target, name, _coerce(value, hint, f"{source}: {key}"))


def _resolve_key(key: str, source: str) -> tuple[str | None, str]:
    key = ALIASES.get(key, key)
    if "." in key:
        section, _, name = key.partition(".")
        if section in SECTIONS and name in _field_names(SECTIONS[section]):
            return section, name
        raise RnnlabError(f"{source}: unknown config key '{key}' (see `rnnlab presets --keys`)")
    if key in ("task", "preset"):
        return None, key
    owners = [s for s, cls in SECTIONS.items() if key in _field_names(cls)]
    if len(owners) == 1:
        return owners[0], key
    if len(owners) > 1:
        raise RnnlabError(f"{source}: key '{key}' is ambiguous; write one of "
                          + ", ".join(f"{s}.{key}" for s in owners))
    raise RnnlabError(f"{source}: unknown config key '{key}' (see `rnnlab presets --keys`)")


def canonical_key(key: str, source: str = "--set") -> str:
    """``section.name`` for a key written either that way or as a bare field name."""
    section, name = _resolve_key(key, source)
    return name if section is None else f"{section}.{name}"


def resume_overrides(args: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides a resumed run accepts (``args``: ``rnnlab train``'s): its budget and other
    ``train.*`` options, but nothing that decides its data (the seed draws a classifier's
    train/valid split and the order of batches and windows), so that a resume trains on what
    the run trained on."""
    if args.out:
        raise RnnlabError(f"--out cannot be used with --resume; the run continues in "
                          f"{args.resume}")
    values = {canonical_key(k): v for k, v in overrides.items()}
    if args.finetune or "train.finetune_from" in values:
        raise RnnlabError("--finetune starts a new run; it cannot be used with --resume")
    if "train.init_from" in values:
        raise RnnlabError("--init-from starts a new run; a resumed run continues from "
                          "its own checkpoint")
    if "train.seed" in values:
        raise RnnlabError("--seed cannot be used with --resume: the seed decides the data split "
                          "and the order of batches and windows, which a resumed run keeps")
    if any(not k.startswith("train.") for k in values) or args.preset or args.config:
        raise RnnlabError("--resume continues a run as configured; only budget and "
                          "train.* options may change")
    return values


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` (a TOML/JSON value or a CLI string) to the type ``hint``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise RnnlabError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, args[0], where) for item in items]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        raise RnnlabError(f"{where}: unsupported type {hint}")
    name = getattr(hint, "__name__", str(hint))
    raise RnnlabError(f"{where}: expected {name}, got {value!r}")


# --- presets -------------------------------------------------------------------------------


def preset_names() -> list[str]:
    """Names of the built-in recipes (``src/rnnlab/presets/*.toml``)."""
    folder = resources.files("rnnlab") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML source of a built-in preset, comments included."""
    if name not in preset_names():
        raise RnnlabError(f"unknown preset '{name}'; known: {', '.join(preset_names())}")
    return (resources.files("rnnlab") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


def read_preset(name: str) -> dict[str, Any]:
    """The raw TOML table of a built-in preset."""
    return tomllib.loads(preset_text(name))


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RnnlabError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RnnlabError(f"config file {path} is not valid TOML: {exc}") from None


def default_preset(task: str, level: str, corpus: str | None) -> str:
    """The recipe used when the user names none."""
    if task == "classify":
        return "imdb-bilstm"
    if corpus == "names":
        return "names"
    if level == "char":
        return "char-fast"
    return "synthetic" if corpus == "synthetic" else "word-small"


def resolve_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < preset < config file < overrides, then validated.

    Without a preset, one is chosen from the task, level and corpus that the config file and
    overrides name (see :func:`default_preset`).
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        # A config file has the same form as a preset (it may be a copy of one).
        file_values = _strip_header(read_toml(config_file), str(config_file))
        # Popped even when `preset` is given, else it would be applied below as a plain key and
        # record a preset that was not the one loaded.
        file_preset = file_values.pop("preset", None)
        preset = preset or file_preset
        layers.append((str(config_file), _flatten(file_values)))
    layers.append(("--set", dict(overrides or {})))
    if preset is None:
        probe = RunConfig()
        _apply_layers(probe, layers)
        preset = default_preset(probe.task, probe.data.level, probe.data.corpus)
    raw = _strip_header(read_preset(preset), f"preset {preset}")
    config = RunConfig.from_dict(raw, source=f"preset {preset}")
    config.preset = preset
    _apply_layers(config, layers)
    # The last layer to name a key is the one to blame for its value.
    named = {canonical_key(k, s): s for s, values in [(f"preset {preset}", _flatten(raw)),
                                                      *layers] for k in values}
    config.validate()
    check_task_fields(config, named)
    return config


def _apply_layers(config: RunConfig, layers: list[tuple[str, dict[str, Any]]]) -> None:
    for source, values in layers:
        apply_overrides(config, values, source=source)
    named = {_resolve_key(k, s) for s, values in layers for k in values}
    if ("data", "corpus") not in named and (config.data.train_path or config.data.text_path):
        # Local files replace the preset's (or default) corpus; done for the probe too, so that
        # a run on local files does not get the synthetic corpus's preset.
        config.data.corpus = None
    if ("data", "level") not in named and config.data.corpus:
        # A corpus read at its natural level unless the user asks otherwise (Shakespeare: chars).
        from rnnlab.data.corpora import CORPORA

        known = CORPORA.get(config.data.corpus)
        if known is not None:
            config.data.level = known.level
    if ("data", "unit") not in named and config.data.corpus and config.task == "lm":
        # A corpus of one example per line (names) is read line by line unless asked otherwise;
        # other corpora keep what the preset says.
        from rnnlab.data.corpora import CORPORA

        known = CORPORA.get(config.data.corpus)
        if known is not None and known.unit == "line":
            config.data.unit = "line"
