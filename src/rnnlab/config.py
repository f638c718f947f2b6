"""Configuration: dataclasses shared by the CLI, the Python API and the run directory.

Each section checks its own values (``validate``); reading presets, TOML files and ``--set``
overrides into a :class:`RunConfig` is :mod:`rnnlab.config_resolve`'s job.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rnnlab.errors import RnnlabError

FORMAT_VERSION = 1

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
TASKS = ("lm", "classify")
LEVELS = ("word", "char")
OPTIMIZERS = ("adam", "adamw", "sgd", "nt-asgd", "asgd")
SCHEDULES = ("constant", "plateau", "cosine")
INPUTS = ("embedding", "onehot", "adaptive")
POOLINGS = ("last", "mean", "max", "concat")
OUTPUTS = ("softmax", "adaptive")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
UNITS = ("stream", "line")


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

    ``weight_drop`` drops hidden-to-hidden weights instead (DropConnect, Wan et al., 2013; the
    weight-dropped LSTM of Merity et al., 2017). ``hidden_sizes`` gives every layer its own
    size (e.g. 1150, 1150, 400); the layers then run as separate modules, with the dropout
    between them locked over time as in Merity et al.
    """

    cell: str = "lstm"
    embedding_dim: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.2  # between layers; also the input and output rates when those are None
    input_dropout: float | None = None  # on the recurrent stack's inputs; None: as dropout
    output_dropout: float | None = None  # before the decoder or head; None: as dropout
    embedding_dropout: float = 0.0  # drops whole word types (Gal & Ghahramani, 2016)
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden matrices (Merity et al., 2017)
    hidden_sizes: list[int] | None = None  # per layer; None: hidden_size in all num_layers
    tie_weights: bool = True  # share input and output embeddings (Press & Wolf, 2017)
    input: str = "embedding"  # "onehot": the classic char-rnn input; "adaptive": see cutoffs
    output: str = "softmax"  # or "adaptive": cheaper softmax over frequency clusters (Grave 2017)
    # Where the frequency bands of an adaptive output or input begin (their first ids).
    cutoffs: list[int] = field(default_factory=lambda: [2000])
    bidirectional: bool = False  # classifier only
    pooling: str = "last"  # classifier only: last | mean | max | concat

    def validate(self) -> None:
        _choice("model.cell", self.cell, CELLS)
        _choice("model.input", self.input, INPUTS)
        _choice("model.pooling", self.pooling, POOLINGS)
        _choice("model.output", self.output, OUTPUTS)
        if self.output == "adaptive" and self.tie_weights:
            raise RnnlabError("model.output = 'adaptive' cannot tie weights; set tie_weights=false")
        if self.input != "embedding" and self.tie_weights:
            raise RnnlabError(f"model.input = '{self.input}' cannot tie weights; "
                              "set tie_weights=false")
        if any(c <= 0 for c in self.cutoffs) or self.cutoffs != sorted(set(self.cutoffs)):
            raise RnnlabError(f"model.cutoffs must be increasing positive ids, got {self.cutoffs}")
        _positive("model.embedding_dim", self.embedding_dim)
        _positive("model.hidden_size", self.hidden_size)
        _positive("model.num_layers", self.num_layers)
        _fraction("model.dropout", self.dropout)
        _fraction("model.embedding_dropout", self.embedding_dropout)
        _fraction("model.weight_drop", self.weight_drop)
        if self.hidden_sizes is not None:
            if len(self.hidden_sizes) != self.num_layers or min(self.hidden_sizes) <= 0:
                raise RnnlabError(f"model.hidden_sizes must be {self.num_layers} positive sizes "
                                  f"(one per layer, model.num_layers), got {self.hidden_sizes}")
        for name in ("input_dropout", "output_dropout"):
            if getattr(self, name) is not None:
                _fraction(f"model.{name}", getattr(self, name))

    def layer_sizes(self) -> list[int]:
        """The hidden size of every layer, first to last."""
        return list(self.hidden_sizes or [self.hidden_size] * self.num_layers)

    def dropout_rates(self) -> tuple[float, float, float]:
        """The (input, between layers, output) dropout rates, ``None`` resolved to ``dropout``."""
        first, last = (self.dropout if p is None else p
                       for p in (self.input_dropout, self.output_dropout))
        return first, self.dropout, last


@dataclass
class DataConfig:
    """Where the text comes from and how it is cut into batches.

    Carving a validation set, one rule for both tasks (:mod:`rnnlab.data.splits`): data without
    its own validation set gives up a fraction of itself, taken from its end for a stream of
    text and stratified by label (seeded by ``train.seed``) for labelled examples. One file
    (``--text``, or a corpus shipped as one file) is cut by the ``split`` fractions; a training
    set given without a validation set (``--train`` without ``--valid``, or imdb) gives up a
    language model's ``split`` share (default 0.1) or a classifier's ``valid_fraction``
    (default 0.2).
    """

    corpus: str | None = "synthetic"  # a known corpus; None when files are given
    train_path: str | None = None  # --train
    valid_path: str | None = None  # --valid
    test_path: str | None = None  # --test
    text_path: str | None = None  # --text: one file, split by `split`
    split: list[float] = field(default_factory=lambda: [0.9, 0.1, 0.0])  # train, valid, test
    level: str = "word"
    # "line": every non-empty line is one example read from a fresh state (rnnlab.lines)
    unit: str = "stream"
    data_dir: str | None = None  # cache of known corpora; default $RNNLAB_DATA or ~/.cache/rnnlab
    min_freq: int = 1
    max_vocab: int = 0  # 0: no limit
    batch_size: int = 20
    bptt: int = 35
    variable_bptt: bool = False  # random window lengths around bptt (Merity et al., 2017)
    eval_batch_size: int = 10
    synthetic_tokens: int = 600_000  # training tokens of the built-in synthetic corpus
    # Token ids memory-mapped from DATA_DIR/prepared/ (rnnlab.data.prepared): "auto" for text
    # files of PREPARED_AUTO_BYTES or more, "always", or "never" (held in memory).
    prepared: str = "auto"
    # classification
    text_field: str = "text"
    label_field: str = "label"
    max_length: int = 400
    valid_fraction: float = 0.2

    def validate(self) -> None:
        _choice("data.level", self.level, LEVELS)
        _choice("data.prepared", self.prepared, ("auto", "always", "never"))
        _choice("data.unit", self.unit, UNITS)
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
        sources = [s for s in ("corpus", "train_path", "text_path") if getattr(self, s)]
        if len(sources) != 1:
            raise RnnlabError(
                "give exactly one data source: --corpus NAME, --train FILE (with --valid/--test), "
                "or --text FILE"
            )
        if (self.valid_path or self.test_path) and not self.train_path:
            raise RnnlabError("--valid/--test need --train")


@dataclass
class TrainConfig:
    """The optimisation: optimiser, schedule, budget, evaluation and checkpoints."""

    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # SGD only
    # "nt-asgd": SGD whose iterates are averaged once the validation loss has not improved on
    # the best of all but the last `nonmono` evaluations (Merity et al., 2017); "asgd" averages
    # from the first step (fine-tuning). Evaluation and the best weights use the average.
    nonmono: int = 5
    # Activation regularisation on the last layer's outputs (Merity et al., 2017): AR on the
    # dropped outputs, TAR on the step-to-step change of the undropped ones; 0: off.
    ar_alpha: float = 0.0
    tar_beta: float = 0.0
    # Each window's learning rate scaled by its length / data.bptt (Merity et al., 2017), so
    # short windows of variable BPTT do not weigh as much as full ones.
    scale_lr_by_window: bool = False
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
    precision: str = "fp32"  # or bf16, fp16, auto: bf16 where computed natively, else fp32
    # The CPU fast paths (rnnlab.fast); false runs plain PyTorch, as does RNNLAB_FAST=0.
    fast: bool = True
    # A finished run to start from: its embeddings (matched by word) and, with init_recurrent,
    # its same-shaped recurrent weights, e.g. a language model trained on unlabelled text.
    init_from: str | None = None
    init_recurrent: bool = True
    # The run this one fine-tunes: it starts from that run's best weights (rnnlab train
    # --finetune RUN); recorded here so that the run directory names its parent.
    finetune_from: str | None = None

    def validate(self) -> None:
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.precision", self.precision, PRECISIONS)
        _positive("train.lr", self.lr)
        _positive("train.epochs", self.epochs)
        for name in ("weight_decay", "momentum", "clip", "max_steps", "max_minutes", "eval_every",
                     "early_stop", "checkpoint_every", "log_every", "threads", "patience",
                     "warmup_steps", "min_lr", "ar_alpha", "tar_beta"):
            if getattr(self, name) < 0:
                raise RnnlabError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        _positive("train.nonmono", self.nonmono)
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
        awd = {"model.weight_drop": self.model.weight_drop, "model.hidden_sizes":
               self.model.hidden_sizes, "train.ar_alpha": self.train.ar_alpha,
               "train.tar_beta": self.train.tar_beta,
               "train.scale_lr_by_window": self.train.scale_lr_by_window}
        used = [key for key, value in awd.items() if value]
        if used and self.data.unit == "line":
            raise RnnlabError(f"{used[0]} is for a language model read as a stream; a model "
                              f"read line by line (data.unit = line) does not take it")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build a config from a (possibly partial) nested dict, checking keys and types."""
        # Imported here because the reader needs these dataclasses to know the keys and types.
        from rnnlab.config_resolve import config_from_dict

        return config_from_dict(raw, source=source)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}

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
