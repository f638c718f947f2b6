"""Prepared corpora: streamed tokenisation equal to the in-memory one, a memory-mapped cache that
is reused, rebuilt when stale, shared safely between processes, and training results unchanged."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.config import DataConfig, ModelConfig
from rnnlab.data.batching import batchify, windows
from rnnlab.data.prepared import prepare
from rnnlab.data.stream_tokenize import StreamTokenizer
from rnnlab.data.text import read_text, tokenize
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import load_lm_data, prepared_source
from rnnlab.lm.evaluation import evaluate_stream, unigram_nll
from rnnlab.models.language_model import RNNLanguageModel

# CRLF and lone CR, blank lines, a BOM, multi-byte characters (2, 3 and 4 bytes), Unicode line
# and word separators, a literal <unk>/<eos>, and no newline at the very end.
TRICKY = ("\ufeffthe cat sat\r\non the mat\n\n   \n  a dog é 日本 😀\r\rthe end <unk> x\u2028"
          "y\u00a0z <eos> w\x0cq\n") * 30 + "the last line has no newline"


def _config(tmp_path: Path, level: str, prepared: str, min_freq: int = 1,
            **files: str) -> DataConfig:
    return DataConfig(corpus=None, level=level, data_dir=str(tmp_path / "data"),
                      prepared=prepared, split=[0.8, 0.1, 0.1], min_freq=min_freq, **files)


def _lists(splits: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: ids.long().tolist() for name, ids in splits.items()}


@pytest.mark.parametrize("level", ["word", "char"])
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 1 << 20])
def test_streamed_tokens_equal_read_text_tokens(tmp_path: Path, level: str,
                                                chunk_bytes: int) -> None:
    # Tiny chunks cut inside lines, words, CRLF pairs and UTF-8 characters.
    path = tmp_path / "t.txt"
    path.write_bytes(TRICKY.encode("utf-8"))
    tokenizer = StreamTokenizer(level)
    ids = np.concatenate(list(tokenizer.file_ids(path, chunk_bytes)))
    types = tokenizer.table.tokens()
    assert [types[i] for i in ids.tolist()] == tokenize(read_text(path), level)


@pytest.mark.parametrize("content", [b"", b" \n\r\n\t", b"ab\x00cd", b"ok \xff\xfe bad"])
def test_streamed_reading_refuses_what_read_text_refuses(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(RnnlabError) as expected:
        read_text(path)
    with pytest.raises(RnnlabError) as streamed:
        list(StreamTokenizer("word").file_ids(path, 2))
    assert str(streamed.value) == str(expected.value)


@pytest.mark.parametrize("level", ["word", "char"])
@pytest.mark.parametrize("layout", ["one file", "three files"])
@pytest.mark.parametrize("min_freq", [1, 2])
def test_prepared_ids_and_vocabulary_equal_the_in_memory_path(
        tmp_path: Path, level: str, layout: str, min_freq: int) -> None:
    (tmp_path / "t.txt").write_bytes(TRICKY.encode("utf-8"))
    (tmp_path / "v.txt").write_bytes("the cat\r\nzebra 😀 dog\n".encode())
    files = ({"text_path": str(tmp_path / "t.txt")} if layout == "one file" else
             {"train_path": str(tmp_path / "t.txt"), "valid_path": str(tmp_path / "v.txt"),
              "test_path": str(tmp_path / "v.txt")})
    memory = load_lm_data(_config(tmp_path, level, "never", min_freq, **files))
    config = _config(tmp_path, level, "always", min_freq, **files)
    mapped = prepare(prepared_source(config), tmp_path / "data", chunk_bytes=5)
    assert mapped.vocab.itos == memory.vocab.itos
    assert _lists(mapped.splits) == _lists(memory.splits)
    assert mapped.unknown == memory.unknown
    assert all(ids.dtype == torch.uint16 for ids in mapped.splits.values())


def test_second_load_maps_the_cache(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TRICKY, encoding="utf-8")
    config = _config(tmp_path, "word", "always", text_path=str(tmp_path / "t.txt"))
    first = prepare(prepared_source(config), tmp_path / "data")
    second = prepare(prepared_source(config), tmp_path / "data")
    assert (first.status, second.status) == ("built", "reused")
    assert _lists(first.splits) == _lists(second.splits)
    assert _mapped_file(second.splits["train"]) == (second.folder / "train.bin").resolve()


def _mapped_file(ids: torch.Tensor) -> Path | None:
    """The file whose memory mapping holds ``ids``' data, if any (Linux /proc)."""
    address = ids.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high and len(rest) == 5:
            return Path(rest[4])
    return None


@pytest.mark.parametrize("damage", ["source", "array", "header", "vocab"])
def test_stale_or_damaged_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    source_file = tmp_path / "t.txt"
    source_file.write_text(TRICKY, encoding="utf-8")
    config = _config(tmp_path, "word", "always", text_path=str(source_file))
    first = prepare(prepared_source(config), tmp_path / "data")
    if damage == "source":
        source_file.write_text(TRICKY.replace("cat", "dog"), encoding="utf-8")
    elif damage == "array":
        with open(first.folder / "train.bin", "r+b") as handle:
            handle.truncate(10)
    elif damage == "header":
        (first.folder / "header.json").write_text("{not json")
    else:
        (first.folder / "vocab.json").write_text('{"level": "word", "unk": "<unk>", '
                                                 '"tokens": ["<unk>", "<eos>", "cat"]}')
    again = prepare(prepared_source(config), tmp_path / "data")
    assert again.status.startswith("rebuilt")
    assert _lists(again.splits) == _lists(load_lm_data(
        _config(tmp_path, "word", "never", text_path=str(source_file))).splits)


def test_evaluation_with_the_trained_vocabulary_reuses_the_cache(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TRICKY, encoding="utf-8")
    config = _config(tmp_path, "word", "always", text_path=str(tmp_path / "t.txt"))
    trained = load_lm_data(config)
    again = prepare(prepared_source(config), tmp_path / "data", trained.vocab)
    assert again.status == "reused"
    other = prepare(prepared_source(config), tmp_path / "data",
                    type(trained.vocab)(["<unk>", "<eos>", "the"]))
    assert other.status == "built" and len(other.vocab) == 3


def _prepare_in_child(args: tuple[str, str]) -> tuple[str, bytes]:
    text, root = args
    config = DataConfig(corpus=None, text_path=text, data_dir=root, prepared="always")
    prepared = prepare(prepared_source(config), Path(root), chunk_bytes=64)
    return prepared.status, prepared.splits["train"].numpy().tobytes()


def test_concurrent_preparations_build_once_and_agree(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TRICKY * 20, encoding="utf-8")
    jobs = [(str(tmp_path / "t.txt"), str(tmp_path / "data"))] * 3
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_prepare_in_child, jobs)
    assert sorted(status for status, _ in results) == ["built", "reused", "reused"]
    assert len({ids for _, ids in results}) == 1
    leftovers = [p for p in (tmp_path / "data" / "prepared").rglob("*") if p.name.endswith("tmp")]
    assert leftovers == []


def test_batchify_views_a_compact_map_and_windows_convert(tmp_path: Path) -> None:
    ids = torch.from_numpy(np.arange(101, dtype=np.uint16))
    streams = batchify(ids, 4)
    assert streams.dtype == torch.uint16 and streams.data_ptr() == ids.data_ptr()  # no copy
    expected = list(windows(batchify(ids.long(), 4), [7, 7, 7, 4]))
    for (x, y), (ex, ey) in zip(windows(streams, [7, 7, 7, 4]), expected, strict=True):
        assert x.dtype == torch.long and torch.equal(x, ex) and torch.equal(y, ey)


def test_evaluating_mapped_ids_equals_evaluating_in_memory_ids(tmp_path: Path,
                                                                one_thread) -> None:
    (tmp_path / "t.txt").write_text(TRICKY, encoding="utf-8")
    data = load_lm_data(_config(tmp_path, "word", "always", text_path=str(tmp_path / "t.txt")))
    assert data.splits["valid"].dtype == torch.uint16
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(embedding_dim=8, hidden_size=8, num_layers=1,
                                         tie_weights=False), len(data.vocab))
    for batch_size in (1, 3):
        assert evaluate_stream(model, data.splits["valid"], batch_size, 10) == evaluate_stream(
            model, data.splits["valid"].long(), batch_size, 10)
    assert unigram_nll(data.splits["train"], data.splits["valid"], len(data.vocab)) == (
        pytest.approx(unigram_nll(data.splits["train"].long(), data.splits["valid"].long(),
                                  len(data.vocab)), rel=1e-12))


@pytest.mark.slow
def test_prepared_path_gives_the_same_perplexity(tmp_path: Path, train_tiny, one_thread) -> None:
    (tmp_path / "t.txt").write_text(TRICKY, encoding="utf-8")
    common = {"data__text_path": str(tmp_path / "t.txt"), "data__data_dir": str(tmp_path / "data"),
              "data__split": [0.8, 0.1, 0.1], "train__max_steps": 6}
    memory = train_tiny("memory", data__prepared="never", **common)
    mapped = train_tiny("mapped", data__prepared="always", **common)
    assert mapped.best["ppl"] == memory.best["ppl"]
    assert mapped.final[0]["test"] == memory.final[0]["test"]
    assert mapped.final[0]["unigram_ppl"] == pytest.approx(memory.final[0]["unigram_ppl"],
                                                           rel=1e-12)


def test_data_prepare_command_prints_what_it_wrote(tmp_path: Path, cli_runner) -> None:
    (tmp_path / "t.txt").write_text(TRICKY, encoding="utf-8")
    args = ["data", "prepare", "--text", str(tmp_path / "t.txt"), "--data-dir",
            str(tmp_path / "data"), "--level", "char"]
    first = cli_runner.run(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "(built)" in first.stdout and "train:" in first.stdout and "uint16" in first.stdout
    assert "(reused)" in cli_runner.run(args, tmp_path).stdout
    assert os.path.isdir(first.stdout.split()[2])


def test_an_unknown_prepared_mode_is_refused() -> None:
    with pytest.raises(RnnlabError, match="data.prepared must be one of auto, always, never"):
        DataConfig(prepared="sometimes").validate()


def test_data_scale_benchmark_writes_corpora_of_the_asked_size(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from data_scale import parse_size, write_chars, write_words

    assert parse_size("10M") == 10_000_000 and parse_size("1B") == 10**9
    write_words(tmp_path / "w.txt", 20_000, 300)
    tokens = tokenize(read_text(tmp_path / "w.txt"), "word")
    assert abs(len(tokens) - 20_000) < 200 and 250 < len(set(tokens)) <= 301
    write_chars(tmp_path / "c.txt", 5_000)
    assert len(read_text(tmp_path / "c.txt")) == 5_000
