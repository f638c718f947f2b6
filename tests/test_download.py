"""Downloads against a real local HTTP server: checksums, atomic placement, clear errors."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rnnlab.data import corpora
from rnnlab.data.corpora import Corpus, RemoteFile, corpus_files, data_dir
from rnnlab.data.download import download, sha256_of
from rnnlab.errors import RnnlabError


@dataclass
class LocalServer:
    root: Path  # the files it serves
    base: str  # http://127.0.0.1:PORT/
    requests: list[str] = field(default_factory=list)  # paths asked for, in order

    def url(self, name: str) -> str:
        return self.base + name

    def publish(self, name: str, content: bytes) -> str:
        """Serve ``content`` as ``name``; returns its sha256."""
        (self.root / name).write_bytes(content)
        return hashlib.sha256(content).hexdigest()


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    # A proxy set in the environment must not intercept requests to 127.0.0.1.
    monkeypatch.setenv("no_proxy", "*")
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_Handler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    local = LocalServer(root, f"http://127.0.0.1:{httpd.server_address[1]}/")
    httpd.requests = local.requests  # type: ignore[attr-defined]
    # A short poll interval makes shutdown() quick at teardown.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield local
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    """A port that nothing listens on: bound by us, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_good_file_is_downloaded_verified_and_placed(server: LocalServer, tmp_path: Path) -> None:
    content = bytes(range(256)) * 6000  # 1.5 MB: more than one read block
    sha = server.publish("train.txt", content)
    dest = tmp_path / "data" / "sub" / "train.txt"  # missing folders are created
    assert download(server.url("train.txt"), dest, sha) == dest
    assert dest.read_bytes() == content
    assert sha256_of(dest) == sha
    assert os.listdir(dest.parent) == ["train.txt"]  # no temporary file left behind


def test_downloaded_file_gets_normal_permissions(server: LocalServer, tmp_path: Path) -> None:
    # A shared data folder needs files readable like any other file the user creates
    # (umask), not private 0600 temporary files renamed into place.
    sha = server.publish("a.txt", b"abc\n")
    dest = tmp_path / "data" / "a.txt"
    download(server.url("a.txt"), dest, sha)
    reference = tmp_path / "data" / "reference"
    reference.write_bytes(b"")
    assert dest.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777


def test_downloaded_file_and_its_folder_entry_reach_the_disk(
        server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    sha = server.publish("a.txt", b"abc\n")
    dest = tmp_path / "data" / "a.txt"
    download(server.url("a.txt"), dest, sha)
    assert any(os.path.basename(p).startswith(".a.txt.") for p in synced), synced
    assert str(dest.parent) in synced  # the rename is durable too


def test_wrong_checksum_leaves_nothing(server: LocalServer, tmp_path: Path) -> None:
    server.publish("train.txt", b"tampered content\n")
    expected = hashlib.sha256(b"the real content\n").hexdigest()
    dest = tmp_path / "data" / "train.txt"
    url = server.url("train.txt")
    with pytest.raises(RnnlabError, match="checksum mismatch") as info:
        download(url, dest, expected)
    assert url in str(info.value) and expected in str(info.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # and no temporary file either


def test_failed_download_keeps_an_existing_file(server: LocalServer, tmp_path: Path) -> None:
    server.publish("train.txt", b"bad\n")
    dest = tmp_path / "train.txt"
    dest.write_bytes(b"previous good copy\n")
    with pytest.raises(RnnlabError):
        download(server.url("train.txt"), dest, hashlib.sha256(b"good\n").hexdigest())
    assert dest.read_bytes() == b"previous good copy\n"
    assert _no_temp_files(tmp_path)


def test_server_down_names_url_and_destination(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/train.txt"
    dest = tmp_path / "data" / "train.txt"
    with pytest.raises(RnnlabError, match="could not download") as info:
        download(url, dest, None, timeout=5)
    assert url in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists() and _no_temp_files(dest.parent)


def test_missing_remote_file_is_a_clear_error(server: LocalServer, tmp_path: Path) -> None:
    url = server.url("absent.txt")
    with pytest.raises(RnnlabError, match="(?i)not found") as info:
        download(url, tmp_path / "absent.txt", None)
    assert url in str(info.value)
    assert list(tmp_path.glob("*absent*")) == []


def test_garbled_http_response_is_a_clear_error(tmp_path: Path) -> None:
    # Something that is not an HTTP server listens on the port (http.client raises its own
    # exception types here, not OSError).
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"SSH-2.0-not-http\r\n\r\n")

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.txt"
    try:
        with pytest.raises(RnnlabError, match="could not download") as info:
            download(url, tmp_path / "x.txt", None, timeout=5)
        assert url in str(info.value)
    finally:
        thread.join(timeout=5)
        listener.close()
    assert list(tmp_path.iterdir()) == []


# --- corpus_files ------------------------------------------------------------------------


@pytest.fixture
def toy_corpus(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    """A corpus registered for this test only, whose files live on the local server."""
    monkeypatch.setattr(corpora, "CORPORA", dict(corpora.CORPORA))  # undone after the test
    files = []
    for split in ("train", "valid"):
        sha = server.publish(f"{split}.txt", f"{split} text\n".encode() * 50)
        files.append(RemoteFile(split, f"toy/{split}.txt", server.url(f"{split}.txt"), sha))
    corpus = Corpus("toy", "lm", "word", "test corpus", tuple(files))
    corpora.CORPORA[corpus.name] = corpus
    return corpus


def test_corpus_files_downloads_once_into_explicit_dir(
    server: LocalServer, toy_corpus: Corpus, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    paths = corpus_files("toy", root)
    assert paths == {"train": root / "toy" / "train.txt", "valid": root / "toy" / "valid.txt"}
    assert paths["train"].read_bytes() == b"train text\n" * 50
    assert sorted(server.requests) == ["/train.txt", "/valid.txt"]
    # Files already present are used as they are: no second download.
    assert corpus_files("toy", root) == paths
    assert len(server.requests) == 2


def test_corpus_files_uses_rnnlab_data_env(
    server: LocalServer, toy_corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RNNLAB_DATA", str(tmp_path / "env-data"))
    assert data_dir() == tmp_path / "env-data"
    paths = corpus_files("toy")
    assert paths["valid"] == tmp_path / "env-data" / "toy" / "valid.txt"
    assert paths["valid"].read_bytes() == b"valid text\n" * 50
    corpus_files("toy")
    assert len(server.requests) == 2
    # An explicit directory wins over the environment.
    assert data_dir(tmp_path / "other") == tmp_path / "other"


def test_data_dir_default_is_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RNNLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_dir() == tmp_path / ".cache" / "rnnlab"


def test_missing_file_without_download_is_an_error(
    server: LocalServer, toy_corpus: Corpus, tmp_path: Path
) -> None:
    with pytest.raises(RnnlabError, match="missing") as info:
        corpus_files("toy", tmp_path / "cache", download_missing=False)
    assert str(tmp_path / "cache" / "toy" / "train.txt") in str(info.value)
    assert server.requests == []


def test_verify_detects_a_changed_local_file(
    server: LocalServer, toy_corpus: Corpus, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    paths = corpus_files("toy", root)
    corpus_files("toy", root, verify=True)  # untouched files pass
    paths["valid"].write_bytes(b"edited by hand\n")
    with pytest.raises(RnnlabError, match="does not match the expected sha256"):
        corpus_files("toy", root, verify=True)
    corpus_files("toy", root)  # without verify, present files are trusted


def test_unknown_corpus() -> None:
    with pytest.raises(RnnlabError, match="unknown corpus 'nope'"):
        corpus_files("nope")
