"""Fetching a file once: download, check its sha256, and move it into place atomically."""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from rnnlab.errors import RnnlabError


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None, *, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, verifying ``sha256``; nothing is left at ``dest`` on failure.

    The bytes go to a temporary file in the destination folder and are renamed into place only
    after the checksum matches, so an interrupted download never looks like a finished one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600) and would stay so after the rename,
    # leaving a shared data folder unreadable to others. open("xb") honours the umask.
    tmp_name = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    out = open(tmp_name, "xb")  # opened outside `try`: on failure there is nothing to remove
    try:
        with out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                raise RnnlabError(
                    f"could not download {url} ({reason}); you seem to be offline or the server "
                    f"refused: fetch it by hand and place it at {dest}"
                ) from None
            out.flush()
            os.fsync(out.fileno())
        actual = sha256_of(tmp_name)
        if sha256 is not None and actual != sha256:
            raise RnnlabError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                f"the file was not saved to {dest}"
            )
        os.replace(tmp_name, dest)
        return dest
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
