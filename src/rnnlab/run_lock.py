"""One process per run directory: an exclusive lock held for the life of a run.

Two ``rnnlab train --out SAME`` started together would otherwise both write into ``SAME`` and
mix their checkpoints; a resume takes the same lock, so nothing trains a run twice at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from rnnlab import checkpoint as ckpt
from rnnlab.errors import RnnlabError

# What a new run writes before and besides its checkpoints: removed again when it fails first.
_RUN_FILES = (ckpt.CONFIG, ckpt.VOCAB, ckpt.RUN_INFO, ckpt.METRICS, ckpt.TRAIN_LOG, ckpt.BEST)


@contextlib.contextmanager
def claim_run(run_dir: str | Path, new: bool) -> Iterator[Path]:
    """Own ``run_dir`` for the life of the block: one rnnlab process per run directory.

    The lock is ``flock`` on the directory itself, so it dies with its process (a crash never
    leaves a stale lock) and adds no file. ``new``: start a run there; refused if it holds a
    checkpoint. A new run that fails before its first checkpoint leaves nothing that would stop
    the same ``--out`` again: the directory goes if this call created it, else the files it wrote.
    """
    run_dir = Path(run_dir)
    created = False
    if new and not run_dir.exists():
        with contextlib.suppress(FileExistsError):  # another process may create it meanwhile
            run_dir.mkdir(parents=True)
            created = True
    elif not run_dir.is_dir():
        raise RnnlabError(f"{run_dir} is not a directory" if run_dir.exists()
                          else f"run directory not found: {run_dir}")
    try:
        fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:  # removed by a failing run between mkdir and open
        raise RnnlabError(f"{run_dir} was removed while starting; try again") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RnnlabError(f"{run_dir} is in use by another rnnlab process (training or "
                              f"resuming it); wait for it to end or use another --out") from None
        if not _same_file(run_dir, fd):  # a failing run removed it before we got the lock
            raise RnnlabError(f"{run_dir} was removed while starting; try again")
        if new and (run_dir / ckpt.TRAINER).exists():
            raise RnnlabError(
                f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
        if new and (run_dir / ckpt.CONFIG).exists():
            _remove_run_files(run_dir)  # a run that died before its first checkpoint
        try:
            yield run_dir
        except BaseException:
            if new and not (run_dir / ckpt.TRAINER).exists():
                if created:
                    shutil.rmtree(run_dir, ignore_errors=True)
                else:
                    _remove_run_files(run_dir)
            raise
    finally:
        os.close(fd)  # releases the lock


def _same_file(path: Path, fd: int) -> bool:
    try:
        mine, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _remove_run_files(run_dir: Path) -> None:
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in [*run_dir.glob("last-*.safetensors"), *run_dir.glob(".*.tmp")]:
        path.unlink(missing_ok=True)
