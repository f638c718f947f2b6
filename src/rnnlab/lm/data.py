"""Language-modelling data: a source (known corpus, local files, one text, or the built-in
synthetic language) becomes a vocabulary and one id tensor per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnnlab.config import DataConfig
from rnnlab.data.corpora import SPLITS, corpus_files, data_dir, get_corpus
from rnnlab.data.prepared import Prepared, Source, prepare
from rnnlab.data.splits import carve, held_out_fractions
from rnnlab.data.synthetic import SyntheticSplits, synthetic_splits
from rnnlab.data.text import read_text, tokenize
from rnnlab.data.vocab import EOS, UNK, UNK_CHAR, Vocab
from rnnlab.errors import RnnlabError


@dataclass
class LMData:
    """Token ids per split and the vocabulary that made them."""

    vocab: Vocab
    splits: dict[str, torch.Tensor]  # name -> (N,) int64 ids
    unknown: dict[str, int] = field(default_factory=dict)  # tokens mapped to <unk>, per split
    synthetic: SyntheticSplits | None = None  # the source itself, for the built-in corpus


def specials_for(level: str) -> tuple[str, ...]:
    # Characters need no end-of-line token: the newline character already is one.
    return (UNK_CHAR,) if level == "char" else (UNK, EOS)


def load_lm_data(config: DataConfig, vocab: Vocab | None = None) -> LMData:
    """Read the configured source; build the vocabulary from train unless ``vocab`` is given."""
    synthetic = None
    if config.corpus == "synthetic":
        if config.level != "word":
            raise RnnlabError("the synthetic corpus is word level; drop --level char")
        synthetic = synthetic_splits(config.synthetic_tokens)
        tokens = {"train": synthetic.train, "valid": synthetic.valid, "test": synthetic.test}
    else:
        prepared = prepared_data(config, vocab)
        if prepared is not None:
            return LMData(prepared.vocab, prepared.splits, prepared.unknown)
        tokens = _split_tokens(config)
    if not tokens.get("train"):
        raise RnnlabError("the training text has no tokens")
    if vocab is None:
        vocab = Vocab.build(
            tokens["train"], level=config.level, specials=specials_for(config.level),
            min_freq=config.min_freq, max_size=config.max_vocab,
            unk=specials_for(config.level)[0],
        )
    data = LMData(vocab, {}, synthetic=synthetic)
    for name, toks in tokens.items():
        data.splits[name], data.unknown[name] = encode(vocab, toks)
    return data


# Text files from this total size on are prepared and memory-mapped under data.prepared = auto.
PREPARED_AUTO_BYTES = 32 << 20


def prepared_data(config: DataConfig, vocab: Vocab | None = None, *,
                  force: bool = False) -> Prepared | None:
    """The source's ids memory-mapped from the data directory's ``prepared/`` cache, or ``None``
    when the source is not text files or, under ``data.prepared = "auto"``, small enough to hold.

    Local files (``--train``/``--text``) are cached there too, under a key of their absolute paths.
    """
    source = prepared_source(config)
    if source is None or (config.prepared == "never" and not force):
        return None
    if config.prepared == "auto" and not force and sum(
            p.stat().st_size for p in source.files.values()) < PREPARED_AUTO_BYTES:
        return None
    return prepare(source, data_dir(config.data_dir), vocab)


def prepared_source(config: DataConfig) -> Source | None:
    """What ``_split_tokens`` reads, as files to prepare; ``None`` for other sources."""
    files: dict[str, Path]
    name = config.corpus
    if getattr(config, "unit", "stream") != "stream":
        return None  # one example per line: read by rnnlab.lines
    if config.corpus:
        corpus = get_corpus(config.corpus)
        if corpus.read_text is not None or corpus.task != "lm" or not corpus.files:
            return None
        paths = corpus_files(config.corpus, config.data_dir)
        if set(paths) & set(SPLITS) == {"train"} or "raw" in paths:
            files = {"all": paths.get("raw", paths.get("train"))}
        else:
            files = {split: path for split, path in paths.items() if split in SPLITS}
    else:
        one = config.text_path or (config.train_path if not config.valid_path else None)
        files = ({"all": Path(one)} if one else
                 {s: Path(p) for s, p in (("train", config.train_path),
                                          ("valid", config.valid_path),
                                          ("test", config.test_path)) if p})
        name = Path(config.text_path or config.train_path).stem
    for path in files.values():
        if not path.is_file():
            read_text(path)  # the same one-line error as the in-memory path
    files = {split: files[split] for split in ("all", *SPLITS) if split in files}  # train first
    fractions = (held_out_fractions(config, "lm") if config.train_path and not config.valid_path
                 else list(config.split))
    return Source(name, files, config.level, fractions, specials_for(config.level),
                  config.min_freq, config.max_vocab)


def encode(vocab: Vocab, tokens: list[str]) -> tuple[torch.Tensor, int]:
    """Ids of ``tokens`` and how many of them were unknown."""
    ids = torch.tensor(vocab.encode(tokens), dtype=torch.long)
    unk = vocab.unk_id
    if unk is None:
        return ids, 0
    # tokens spelled like the unknown symbol itself (PTB's "<unk>") were not unknown to us
    return ids, int((ids == unk).sum()) - sum(t == vocab.unk for t in tokens)


def _split_tokens(config: DataConfig) -> dict[str, list[str]]:
    """Tokens per split from a known corpus, --train/--valid/--test files, or one --text file."""
    if config.corpus:
        corpus = get_corpus(config.corpus)
        if corpus.read_text is not None:
            return _by_fraction(corpus.read_text(data_dir(config.data_dir)), config, config.split)
        if corpus.task != "lm":
            raise RnnlabError(f"corpus '{config.corpus}' is for --task {corpus.task}, not lm")
        paths = corpus_files(config.corpus, config.data_dir)
        if set(paths) & set(SPLITS) == {"train"} or "raw" in paths:
            source = paths.get("raw", paths.get("train"))
            return _by_fraction(read_text(source), config, config.split)
        return {name: tokenize(read_text(path), config.level)
                for name, path in paths.items() if name in SPLITS}
    if config.text_path:
        return _by_fraction(read_text(config.text_path), config, config.split)
    if not config.valid_path:  # carve valid (and test) from the training file
        return _by_fraction(read_text(config.train_path), config, held_out_fractions(config, "lm"))
    files = {"train": config.train_path, "valid": config.valid_path}
    if config.test_path:
        files["test"] = config.test_path
    return {name: tokenize(read_text(path), config.level) for name, path in files.items()}


def _by_fraction(text: str, config: DataConfig, fractions: list[float]) -> dict[str, list[str]]:
    """Contiguous runs of the text's tokens at ``fractions``, whatever its lines (see
    :mod:`rnnlab.data.splits`)."""
    pieces = carve(fractions, tokens=tokenize(text, config.level))
    named = dict(zip(SPLITS, pieces, strict=False))
    for name in ("train", "valid"):
        if not _has_text(named[name]):
            raise RnnlabError(
                f"the text is too short to split into train/valid by {fractions}: "
                f"the {name} part is empty"
            )
    return {name: piece for name, piece in named.items() if _has_text(piece)}


def _has_text(tokens: list[str]) -> bool:
    # A piece of blanks or line ends only is no text to learn from or measure.
    return any(t != EOS and not t.isspace() for t in tokens)
