"""Fetching a file once: download, check its sha256, and move it into place atomically."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rnnlab.atomic import atomic_open
from rnnlab.errors import RnnlabError


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None, *, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, verifying ``sha256``; nothing is left at ``dest`` on failure.

    The bytes go through :func:`rnnlab.atomic.atomic_open` and are renamed into place only
    after the checksum matches, so an interrupted download never looks like a finished one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_open(dest, "wb") as out:
        for block in _blocks(url, dest, timeout):
            out.write(block)  # a full disk here is an OSError of its own, not a network error
            digest.update(block)
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise RnnlabError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                f"the file was not saved to {dest}"
            )
    return dest


def _blocks(url: str, dest: Path, timeout: float) -> Iterator[bytes]:
    """The body of ``url`` in blocks; network failures become one clear error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            declared, received = response.headers.get("Content-Length", ""), 0
            for block in iter(lambda: response.read(1 << 20), b""):
                received += len(block)
                yield block
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise RnnlabError(
            f"could not download {url} ({reason}); you seem to be offline or the server "
            f"refused: fetch it by hand and place it at {dest}"
        ) from None
    # A connection closed early ends the body quietly: only the declared length tells.
    if declared.isdigit() and received != int(declared):
        raise RnnlabError(
            f"the download of {url} was cut short ({received} of {declared} bytes); "
            f"nothing was saved to {dest}"
        )
