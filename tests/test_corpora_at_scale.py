"""Corpora shipped as zip archives (wikitext-103, enwik8, text8), served from 127.0.0.1:
download, checks, extraction, byte cuts and preparation; every failure leaves nothing behind."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rnnlab.config import DataConfig
from rnnlab.data import archives
from rnnlab.data.archives import Archive
from rnnlab.errors import RnnlabError
from rnnlab.lm.data import load_lm_data


class _Served(BaseHTTPRequestHandler):
    files: dict[str, tuple[bytes, int]] = {}  # path -> (body, declared Content-Length)

    def do_GET(self) -> None:
        if self.path not in self.files:
            self.send_error(404)
            return
        body, declared = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)  # a declared length beyond the body: a truncated download

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.setenv("no_proxy", "*")
    files: dict[str, tuple[bytes, int]] = {}
    handler = type("Handler", (_Served,), {"files": files})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def publish(name: str, body: bytes, missing: int = 0) -> str:
        files[f"/{name}"] = (body, len(body) + missing)
        return f"http://127.0.0.1:{httpd.server_address[1]}/{name}"

    yield publish
    httpd.shutdown()
    httpd.server_close()


def _zip(members: dict[str, bytes], stored: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w", method) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def _sha(data: bytes, kind: str = "sha256") -> str:
    return hashlib.new(kind, data).hexdigest()


WIKI = {split: (f" = {split} = \n\n the {split} text <unk> , with words .\n" * 20).encode()
        for split in ("train", "valid", "test")}


def _wikitext(serve, monkeypatch: pytest.MonkeyPatch, **change: object) -> Archive:
    members = {f"wikitext-103/wiki.{s}.tokens": data for s, data in WIKI.items()}
    body = _zip(members)
    archive = dataclasses.replace(
        archives.WIKITEXT103, url=serve("wikitext-103-v1.zip", body), sha256=_sha(body),
        member_sha1={name: _sha(data, "sha1") for name, data in members.items()})
    archive = dataclasses.replace(archive, **change)
    monkeypatch.setitem(archives.ARCHIVES, "wikitext-103", archive)
    return archive


def _nothing_left(root: Path) -> bool:
    return not root.exists() or all(p.is_dir() and not any(p.iterdir()) for p in root.rglob("*"))


def test_wikitext103_is_downloaded_extracted_and_prepared(
        serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _wikitext(serve, monkeypatch)
    config = DataConfig(corpus="wikitext-103", data_dir=str(tmp_path), prepared="always")
    mapped = load_lm_data(config)
    for split, data in WIKI.items():
        assert (tmp_path / "wikitext-103" / f"{split}.txt").read_bytes() == data
    memory = load_lm_data(dataclasses.replace(config, prepared="never"))
    assert mapped.vocab.itos == memory.vocab.itos
    assert {k: v.long().tolist() for k, v in mapped.splits.items()} == {
        k: v.tolist() for k, v in memory.splits.items()}
    assert not list((tmp_path / "wikitext-103").glob(".extract-*"))


def test_enwik8_is_cut_at_the_end_one_character_per_byte(
        serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    raw = bytes(range(1, 256)).replace(b"\r", b"") * 2  # every byte but NUL and CR, twice
    body = _zip({"enwik8": raw})
    monkeypatch.setitem(archives.ARCHIVES, "enwik8", dataclasses.replace(
        archives.ENWIK8, url=serve("enwik8.zip", body), size=len(body),
        member_size=len(raw), held_out=50))
    data = load_lm_data(DataConfig(corpus="enwik8", level="char", data_dir=str(tmp_path),
                                   prepared="always"))
    assert [data.splits[s].numel() for s in ("train", "valid", "test")] == [
        len(raw) - 100, 50, 50]
    decoded = "".join(data.vocab.decode(data.splits["test"].long().tolist()))
    assert decoded.encode("latin-1") == raw[-50:]


def test_text8_is_cut_90_5_5(serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    raw = b"anarchism originated as a term of abuse " * 50  # 2000 bytes
    body = _zip({"text8": raw})
    monkeypatch.setitem(archives.ARCHIVES, "text8", dataclasses.replace(
        archives.TEXT8, url=serve("text8.zip", body), size=len(body), member_size=2000,
        held_out=100))
    archives.prepare_text8(tmp_path)
    pieces = [(tmp_path / "text8" / f"{s}.txt").read_bytes() for s in ("train", "valid", "test")]
    assert [len(p) for p in pieces] == [1800, 100, 100] and b"".join(pieces) == raw


@pytest.mark.parametrize("fault", ["checksum", "truncated", "not a zip", "bad crc",
                                   "member hash", "member missing", "wrong size"])
def test_a_bad_download_is_one_error_and_leaves_nothing(
        serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fault: str) -> None:
    members = {f"wikitext-103/wiki.{s}.tokens": data for s, data in WIKI.items()}
    body = _zip(members, stored=True)
    change: dict[str, object] = {}
    if fault == "checksum":
        change["sha256"] = _sha(b"something else")
    elif fault == "truncated":
        change["url"] = serve("cut.zip", body[: len(body) // 2], missing=len(body) // 2)
        change["sha256"] = _sha(body)
    elif fault == "not a zip":
        body = b"<html>moved</html>" * 10
    elif fault == "bad crc":
        at = body.index(b"the train text") + 4
        body = body[:at] + b"X" + body[at + 1:]
    elif fault == "member hash":
        change["member_sha1"] = dict.fromkeys(members, _sha(b"other", "sha1"))
    elif fault == "member missing":
        body = _zip({"wikitext-103/wiki.train.tokens": WIKI["train"]})
    else:
        change["size"] = len(body) + 1
    archive = _wikitext(serve, monkeypatch)
    url = serve("w.zip", body)
    change.setdefault("url", url)
    change.setdefault("sha256", _sha(body))
    monkeypatch.setitem(archives.ARCHIVES, "wikitext-103",
                        dataclasses.replace(archive, **change))
    with pytest.raises(RnnlabError) as info:
        load_lm_data(DataConfig(corpus="wikitext-103", data_dir=str(tmp_path)))
    assert "\n" not in str(info.value)
    if fault == "truncated":
        assert "cut short" in str(info.value)
    assert _nothing_left(tmp_path)
