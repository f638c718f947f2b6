"""Line-by-line data: every non-empty line is one example, framed as ``<s> tokens </s>``.

Sources: a known corpus (names: one file), one file (``--text``) or ``--train``/``--valid``/
``--test`` files. One file is cut into train/valid[/test] by ``data.split`` fractions of its
LINES, shuffled with ``train.seed`` (so the split is a pure function of the recorded config).
A labelled source (a CSV/TSV/JSONL file with text and label fields, or a folder of
``<label>.txt`` files, one example per line) gives every line its label; its split is
stratified by label.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rnnlab.classify.data import (
    FORMATS,
    Examples,
    read_examples,
    read_label_folder,
    split_examples,
)
from rnnlab.classify.data import (
    label_names as sorted_label_names,
)
from rnnlab.config import RunConfig
from rnnlab.data.corpora import SPLITS, corpus_files, get_corpus
from rnnlab.data.text import read_text
from rnnlab.data.vocab import UNK, UNK_CHAR, Vocab
from rnnlab.errors import RnnlabError

BOS = "<s>"  # every line starts from it: the first token is predicted too
EOL = "</s>"  # every line ends with it: predicting it is predicting where the line ends


def specials_for(level: str) -> tuple[str, str, str]:
    return (UNK_CHAR if level == "char" else UNK, BOS, EOL)


def line_tokens(line: str, level: str) -> list[str]:
    """A line's tokens without the frame: its characters, or its whitespace-separated words."""
    return list(line) if level == "char" else line.split()


def normalise(line: str, level: str) -> str:
    """The text a line stands for once tokenised (how samples and lines are compared)."""
    return line if level == "char" else " ".join(line.split())


@dataclass
class LineBatch:
    """Right-padded lines: inputs and targets (B, T), target counts (B,), labels (B,) or None."""

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.lengths.shape[0]


@dataclass
class LineSet:
    """The framed lines of one split as one flat id tensor with per-line offsets."""

    texts: list[str]  # each line as normalised text (for novelty)
    flat: torch.Tensor  # (N_tokens,) <s> ... </s> of every line, back to back
    offsets: torch.Tensor  # (N,) where each line's <s> is
    lengths: torch.Tensor  # (N,) targets per line: its tokens + 1 (the </s>)
    labels: torch.Tensor | None = None  # (N,) label ids
    unknown: int = 0  # tokens mapped to the unknown symbol

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def batch(self, index: torch.Tensor) -> LineBatch:
        """The lines at ``index``, right-padded with id 0 (never scored)."""
        lengths = self.lengths[index]  # (B,)
        steps = torch.arange(int(lengths.max()) + 1)  # (T + 1,)
        mask = steps[None, :] <= lengths[:, None]  # (B, T + 1): the frame's ids
        positions = (self.offsets[index][:, None] + steps[None, :]).clamp(max=self.flat.numel() - 1)
        ids = torch.where(mask, self.flat[positions], 0)  # (B, T + 1)
        labels = None if self.labels is None else self.labels[index]
        return LineBatch(ids[:, :-1], ids[:, 1:], lengths, labels)


@dataclass
class LineData:
    vocab: Vocab
    sets: dict[str, LineSet]
    label_names: list[str] | None = None
    stats: dict = field(default_factory=dict)


@dataclass
class _Lines:
    """Raw lines of one split, with their labels when the source has them."""

    texts: list[str]
    labels: list[str] | None = None


def load_line_data(config: RunConfig, vocab: Vocab | None = None,
                   label_names: list[str] | None = None) -> LineData:
    """Read, split and encode the configured lines; build the vocabulary (and the label names)
    from train unless they are given (a trained run's)."""
    data, level = config.data, config.data.level
    skipped = [0]
    raw = _read_splits(config, skipped)
    if len(raw["train"].texts) == 0:
        raise RnnlabError("the training data has no non-empty line")
    labelled = raw["train"].labels is not None
    mixed = [s for s, lines in raw.items() if (lines.labels is not None) != labelled]
    if mixed:
        raise RnnlabError(f"the {mixed[0]} data {'lacks' if labelled else 'has'} labels but "
                          f"the training data {'has' if labelled else 'has none'}: give "
                          "labelled (or unlabelled) lines for every split")
    if labelled:
        names = label_names or sorted_label_names(raw["train"].labels)
        _check_labels(raw, names)
    else:
        names = None
    if vocab is None:
        tokens = (t for line in raw["train"].texts for t in line_tokens(line, level))
        specials = specials_for(level)
        vocab = Vocab.build(tokens, level=level, specials=specials, min_freq=data.min_freq,
                            max_size=data.max_vocab, unk=specials[0])
    sets = {name: encode_lines(vocab, lines.texts, lines.labels, names)
            for name, lines in raw.items()}
    stats = {"lines": {s: len(v) for s, v in sets.items()},
             "tokens": {s: int(v.lengths.sum()) for s, v in sets.items()},
             "unknown": {s: v.unknown for s, v in sets.items()},
             "empty_lines_skipped": skipped[0], "split": list(data.split),
             "seed": config.train.seed}
    if names is not None:
        stats["labels"] = names
    return LineData(vocab, sets, names, stats)


def encode_lines(vocab: Vocab, texts: list[str], labels: list[str] | None = None,
                 names: list[str] | None = None) -> LineSet:
    """Frame and encode ``texts`` (one line each); ``labels`` become ids in ``names``."""
    bos, eol, unk = vocab.stoi[BOS], vocab.stoi[EOL], vocab.unk_id
    flat: list[int] = []
    offsets, lengths, unknown = [], [], 0
    for text in texts:
        ids = vocab.encode(line_tokens(text, vocab.level))
        unknown += sum(i == unk for i in ids)
        offsets.append(len(flat))
        lengths.append(len(ids) + 1)
        flat.extend([bos, *ids, eol])
    label_ids = None
    if labels is not None and names is not None:
        index = {name: i for i, name in enumerate(names)}
        label_ids = torch.tensor([index[label] for label in labels], dtype=torch.long)
    return LineSet([normalise(t, vocab.level) for t in texts],
                   torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long),
                   torch.tensor(lengths, dtype=torch.long), label_ids, unknown)


# --- reading and splitting ------------------------------------------------------------------


def is_labelled(path: str | Path) -> bool:
    """A folder of per-label files, or a table / JSON-lines file (by extension)."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    return path.is_dir() or name.endswith(FORMATS)


def _read_splits(config: RunConfig, skipped: list[int]) -> dict[str, _Lines]:
    data = config.data
    if data.corpus:
        corpus = get_corpus(data.corpus)
        if corpus.task != "lm" or corpus.read_text is not None or not corpus.files:
            raise RnnlabError(f"corpus '{data.corpus}' cannot be read line by line; give "
                              "--text FILE or a corpus of text files (e.g. names)")
        paths = corpus_files(data.corpus, data.data_dir)
        if "raw" in paths or set(paths) & set(SPLITS) == {"train"}:
            return _by_fraction(_read(paths.get("raw", paths.get("train")), config, skipped),
                                config)
        return {name: _read(path, config, skipped) for name, path in paths.items()
                if name in SPLITS}
    if data.text_path:
        return _by_fraction(_read(data.text_path, config, skipped), config)
    if not data.valid_path:  # valid carved from train; test from its own file when given
        splits = _by_fraction(_read(data.train_path, config, skipped), config,
                              with_test=not data.test_path)
        if data.test_path:
            splits["test"] = _read(data.test_path, config, skipped)
        return splits
    files = {"train": data.train_path, "valid": data.valid_path, "test": data.test_path}
    read = {name: _read(path, config, skipped) for name, path in files.items() if path}
    if read["train"].labels is not None:
        _check_single(Examples(read["train"].texts, read["train"].labels, [], data.train_path))
    return read


def _read(path: str | Path, config: RunConfig, skipped: list[int]) -> _Lines:
    if is_labelled(path):
        examples = (read_label_folder(path, skipped) if Path(path).is_dir() else
                    read_examples(path, text_field=config.data.text_field,
                                  label_field=config.data.label_field))
        return _Lines([t.strip() for t in examples.texts], examples.labels)
    texts, empty = split_lines(read_text(path))
    skipped[0] += empty
    return _Lines(texts)


def split_lines(text: str) -> tuple[list[str], int]:
    """The non-empty lines of ``text`` and how many empty (or blank) lines were left out."""
    lines = text.splitlines()
    kept = [line for line in lines if line.strip()]
    return kept, len(lines) - len(kept)


def _by_fraction(lines: _Lines, config: RunConfig, with_test: bool = True,
                 ) -> dict[str, _Lines]:
    """Train/valid[/test] lines at the ``split`` fractions: shuffled with the seed (stratified
    by label when there are labels), each split kept in file order. Without ``with_test`` no
    test lines are carved (a test file was given)."""
    fractions, seed, n = config.data.split, config.train.seed, len(lines.texts)
    fractions = fractions if with_test else fractions[:2]
    if n < 2:
        raise RnnlabError(f"{'no' if n == 0 else 'only one'} non-empty line: splitting into "
                          "train and valid needs at least two")
    if lines.labels is not None:
        examples = Examples(lines.texts, lines.labels, list(range(n)), "the data")
        _check_single(examples)
        pieces = split_examples(examples, fractions, seed)
        return {s: _Lines(p.texts, p.labels) for s, p in zip(SPLITS, pieces, strict=False)
                if p is not None}
    order = np.random.default_rng(seed % 2**63).permutation(n)
    valid = max(1, round(n * fractions[1]))
    test = max(1, round(n * fractions[2])) if len(fractions) > 2 and fractions[2] > 0 else 0
    if n - valid - test < 1:
        raise RnnlabError(f"{n} lines are too few to split by {fractions}")
    cuts = {"train": order[: n - valid - test], "valid": order[n - valid - test : n - test],
            "test": order[n - test :]}
    return {s: _Lines([lines.texts[i] for i in np.sort(index)])
            for s, index in cuts.items() if index.size}


def _check_single(examples: Examples) -> None:
    counts = Counter(examples.labels)
    single = sorted(label for label, count in counts.items() if count == 1)
    if single:
        raise RnnlabError(f"label '{single[0]}' has a single example; every label needs at "
                          f"least two lines (to learn from and to measure on)")


def _check_labels(raw: dict[str, _Lines], names: list[str]) -> None:
    known = set(names)
    for split, lines in raw.items():
        unknown = sorted(set(lines.labels) - known)
        if unknown:
            raise RnnlabError(f"the {split} data has label '{unknown[0]}', which the training "
                              f"data lacks (labels: {', '.join(names)})")
