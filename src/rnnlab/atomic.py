"""The one way rnnlab writes a final file: all of the new content or none of it.

Bytes go to a temporary ``.NAME.XXXXXXXX.tmp`` file in the destination folder, which is
fsynced, given the mode a plain ``open`` would give (the umask's), renamed over ``NAME``, and
the folder fsynced so that the rename survives a crash too. On any error the temporary file is
removed and the previous ``NAME``, if any, is untouched. A crash (kill -9, power loss) can
leave a ``.*.tmp`` file behind, never a torn ``NAME``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """The mode a plain ``open`` would give a new file (mkstemp's 0600 is too private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: it replaces ``path`` when the block ends,
    and is discarded (``path`` untouched) when the block raises.

    >>> with atomic_open("out.jsonl.gz") as raw:         # doctest: +SKIP
    ...     with gzip.GzipFile(fileobj=raw, mode="wb") as out:
    ...         out.write(b"...")
    """
    if mode != "wb":
        raise ValueError(f"atomic_open writes bytes: mode must be 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), file_mode())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of the new one."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries: a rename is durable only once its directory is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
