"""Configuration: dataclasses shared by the CLI, the Python API and the run directory.

Precedence, lowest first: dataclass defaults < ``--preset`` < ``--config FILE.toml`` <
``--set section.key=value`` (the CLI's own flags such as ``--epochs`` are sugar for ``--set``).
Unknown keys and values of the wrong type are errors, and the fully resolved config is written
into every run directory as ``config.json`` with a format version.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rnnlab.errors import RnnlabError

FORMAT_VERSION = 1

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
TASKS = ("lm", "classify")
LEVELS = ("word", "char")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "plateau", "cosine")
INPUTS = ("embedding", "onehot")
POOLINGS = ("last", "mean", "max", "concat")
OUTPUTS = ("softmax", "adaptive")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class ModelConfig:
    """The network: a recurrent stack between an input layer and an output layer.

    Dropout acts only on the non-recurrent connections (Zaremba et al., 2014), in up to four
    places, each a probability in [0, 1):

    * ``embedding_dropout``: whole rows of the embedding table, i.e. every occurrence of a
      dropped word type in the batch (Gal & Ghahramani, 2016).
    * ``input_dropout``: the inputs of the recurrent stack (embeddings or one-hot vectors);
      ``None`` means "same as ``dropout``". The language model uses one mask per sequence,
      shared by every step ("locked"; Gal & Ghahramani, 2016; Merity et al., 2017), so on
      one-hot input it removes whole characters for a whole window: ``char-rnn`` sets 0.
    * ``dropout``: between recurrent layers (element-wise, per step).
    * ``output_dropout``: on the last layer's outputs before the decoder (locked), or on the
      classifier's pooled features before its head; ``None`` means "same as ``dropout``".

    ``None`` keeps a config written before the input and output rates were separate meaning
    what it meant then: one ``dropout`` in all three places.
    """

    cell: str = "lstm"
    embedding_dim: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.2  # between layers; also the input and output rates when those are None
    input_dropout: float | None = None  # on the recurrent stack's inputs; None: as dropout
    output_dropout: float | None = None  # before the decoder or head; None: as dropout
    embedding_dropout: float = 0.0  # drops whole word types (Gal & Ghahramani, 2016)
    tie_weights: bool = True  # share input and output embeddings (Press & Wolf, 2017)
    input: str = "embedding"  # "onehot" is the classic char-rnn input
    output: str = "softmax"  # or "adaptive": cheaper softmax over frequency clusters (Grave 2017)
    cutoffs: list[int] = field(default_factory=lambda: [2000])  # adaptive: cluster boundaries
    bidirectional: bool = False  # classifier only
    pooling: str = "last"  # classifier only: last | mean | max | concat

    def validate(self) -> None:
        _choice("model.cell", self.cell, CELLS)
        _choice("model.input", self.input, INPUTS)
        _choice("model.pooling", self.pooling, POOLINGS)
        _choice("model.output", self.output, OUTPUTS)
        if self.output == "adaptive" and self.tie_weights:
            raise RnnlabError("model.output = 'adaptive' cannot tie weights; set tie_weights=false")
        if self.input == "onehot" and self.tie_weights:
            raise RnnlabError("model.input = 'onehot' cannot tie weights; set tie_weights=false")
        if any(c <= 0 for c in self.cutoffs) or self.cutoffs != sorted(set(self.cutoffs)):
            raise RnnlabError(f"model.cutoffs must be increasing positive ids, got {self.cutoffs}")
        _positive("model.embedding_dim", self.embedding_dim)
        _positive("model.hidden_size", self.hidden_size)
        _positive("model.num_layers", self.num_layers)
        _fraction("model.dropout", self.dropout)
        _fraction("model.embedding_dropout", self.embedding_dropout)
        for name in ("input_dropout", "output_dropout"):
            if getattr(self, name) is not None:
                _fraction(f"model.{name}", getattr(self, name))

    def dropout_rates(self) -> tuple[float, float, float]:
        """The (input, between layers, output) dropout rates, ``None`` resolved to ``dropout``."""
        first, last = (self.dropout if p is None else p
                       for p in (self.input_dropout, self.output_dropout))
        return first, self.dropout, last


@dataclass
class DataConfig:
    """Where the text comes from and how it is cut into batches.

    Carving a validation set, for both tasks: one file (``--text``, or a corpus shipped as one
    file) is cut into train/valid[/test] by the ``split`` fractions; a training set that comes
    without a validation set (``--train`` without ``--valid``, or a corpus such as imdb) gives
    up its share: a language model's by ``split`` (contiguous text), a classifier's by
    ``valid_fraction`` (stratified by label, seeded by ``train.seed``).
    """

    corpus: str | None = "synthetic"  # a known corpus; None when files are given
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    text: str | None = None  # one file, split by `split`
    split: list[float] = field(default_factory=lambda: [0.9, 0.1, 0.0])  # train, valid, test
    level: str = "word"
    data_dir: str | None = None  # cache of known corpora; default $RNNLAB_DATA or ~/.cache/rnnlab
    min_freq: int = 1
    max_vocab: int = 0  # 0: no limit
    batch_size: int = 20
    bptt: int = 35
    variable_bptt: bool = False  # random window lengths around bptt (Merity et al., 2017)
    eval_batch_size: int = 10
    synthetic_tokens: int = 600_000  # training tokens of the built-in synthetic corpus
    # classification
    text_field: str = "text"
    label_field: str = "label"
    max_length: int = 400
    valid_fraction: float = 0.2

    def validate(self) -> None:
        _choice("data.level", self.level, LEVELS)
        for name in ("batch_size", "bptt", "eval_batch_size", "min_freq", "max_length",
                     "synthetic_tokens"):
            _positive(f"data.{name}", getattr(self, name))
        if self.max_vocab < 0:
            raise RnnlabError(
                f"data.max_vocab must be >= 0 (0 means no limit), got {self.max_vocab}"
            )
        if len(self.split) not in (2, 3) or any(f < 0 for f in self.split):
            raise RnnlabError(f"data.split must be 2 or 3 non-negative fractions, got {self.split}")
        if abs(sum(self.split) - 1.0) > 1e-6 or self.split[0] <= 0 or self.split[1] <= 0:
            raise RnnlabError(
                f"data.split fractions must sum to 1 with train and valid > 0, got {self.split}"
            )
        if not 0 < self.valid_fraction < 1:
            raise RnnlabError(f"data.valid_fraction must be in (0, 1), got {self.valid_fraction}")
        sources = [s for s in ("corpus", "train", "text") if getattr(self, s)]
        if len(sources) != 1:
            raise RnnlabError(
                "give exactly one data source: --corpus NAME, --train FILE (with --valid/--test), "
                "or --text FILE"
            )
        if (self.valid or self.test) and not self.train:
            raise RnnlabError("--valid/--test need --train")


@dataclass
class TrainConfig:
    """The optimisation: optimiser, schedule, budget, evaluation and checkpoints."""

    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # SGD only
    schedule: str = "plateau"  # constant | plateau (divide by 1/lr_decay) | cosine over the budget
    lr_decay: float = 0.25  # plateau: multiply the lr by this when valid loss does not improve
    patience: int = 0  # plateau: evaluations without improvement before decaying
    min_lr: float = 0.0
    warmup_steps: int = 0
    clip: float = 0.25  # max gradient norm; 0 disables
    epochs: int = 10
    max_steps: int = 0  # 0: no step limit
    max_minutes: float = 0.0  # 0: no time limit
    eval_every: int = 0  # steps between evaluations; 0: once per epoch
    early_stop: int = 0  # stop after this many evaluations without improvement; 0: never
    checkpoint_every: int = 0  # steps between `last` checkpoints besides each evaluation; 0: off
    log_every: int = 50  # steps between lines of train_log.jsonl (learning curves); 0: off
    seed: int = 1234
    threads: int = 0  # 0: PyTorch's default
    device: str = "auto"
    precision: str = "fp32"
    # The CPU fast paths (rnnlab.fast); false runs plain PyTorch, as does RNNLAB_FAST=0.
    fast: bool = True
    # A finished run to start from: its embeddings (matched by word) and, with init_recurrent,
    # its same-shaped recurrent weights, e.g. a language model trained on unlabelled text.
    init_from: str | None = None
    init_recurrent: bool = True

    def validate(self) -> None:
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.precision", self.precision, PRECISIONS)
        _positive("train.lr", self.lr)
        _positive("train.epochs", self.epochs)
        for name in ("weight_decay", "momentum", "clip", "max_steps", "max_minutes", "eval_every",
                     "early_stop", "checkpoint_every", "log_every", "threads", "patience",
                     "warmup_steps", "min_lr"):
            if getattr(self, name) < 0:
                raise RnnlabError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr_decay <= 1:
            raise RnnlabError(f"train.lr_decay must be in (0, 1], got {self.lr_decay}")


@dataclass
class RunConfig:
    """Everything that defines a run; written to ``config.json``."""

    task: str = "lm"
    preset: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        _choice("task", self.task, TASKS)
        for section in SECTIONS:
            _finite_numbers(section, getattr(self, section))
        self.model.validate()
        self.data.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build a config from a (possibly partial) nested dict, checking keys and types."""
        config = cls()
        apply_overrides(config, _flatten(_strip_header(raw, source)), source=source)
        return config


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}

# Keys that mean something for one task only, with that task.
TASK_ONLY: dict[str, str] = {
    "model.tie_weights": "lm", "model.input": "lm", "model.output": "lm", "model.cutoffs": "lm",
    "data.bptt": "lm", "data.variable_bptt": "lm", "data.synthetic_tokens": "lm",
    "model.bidirectional": "classify", "model.pooling": "classify",
    "data.text_field": "classify", "data.label_field": "classify", "data.max_length": "classify",
    "data.valid_fraction": "classify",
}
# Values besides the default that still mean "unused" for the other task: a classifier ties no
# weights, so `tie_weights = false` (as the imdb presets write it) is what it does anyway.
_INERT: dict[str, Any] = {"model.tie_weights": False}


def check_task_fields(config: RunConfig, named: dict[str, str]) -> None:
    """Refuse a value set for the other task's keys (``named``: key -> where it was set).

    Only a value that differs from the field's default counts, so that a preset copied whole
    into a config file, or a default written out, stays valid for either task.
    """
    for key, source in named.items():
        owner = TASK_ONLY.get(key)
        if owner is None or owner == config.task:
            continue
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        default = getattr(SECTIONS[section](), name)
        if value != default and not (key in _INERT and value == _INERT[key]):
            raise RnnlabError(f"{source}: {key} is for --task {owner} only, and this run's "
                              f"task is {config.task}")


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


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RnnlabError(f"{name} must be one of {', '.join(allowed)}; got '{value}'")


def _finite_numbers(section: str, values: Any) -> None:
    """Reject NaN and infinities in every float field: comparisons with NaN are all false, so
    range checks alone would let ``nan`` through to the optimiser."""
    for f in dataclasses.fields(values):
        value = getattr(values, f.name)
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise RnnlabError(f"{section}.{f.name} must be a finite number, got {value}")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise RnnlabError(f"{name} must be positive, got {value}")


def _fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise RnnlabError(f"{name} must be in [0, 1), got {value}")


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
    if ("data", "corpus") not in named and (config.data.train or config.data.text):
        # Local files replace the preset's (or default) corpus; done for the probe too, so that
        # a run on local files does not get the synthetic corpus's preset.
        config.data.corpus = None
    if ("data", "level") not in named and config.data.corpus:
        # A corpus read at its natural level unless the user asks otherwise (Shakespeare: chars).
        from rnnlab.data.corpora import CORPORA

        known = CORPORA.get(config.data.corpus)
        if known is not None:
            config.data.level = known.level
