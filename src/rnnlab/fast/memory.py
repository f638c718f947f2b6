"""Keeping freed memory in the process: a process-wide malloc setting, made only on request."""

from __future__ import annotations

import ctypes
import sys


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of handing it back to the OS.

    A training step allocates and frees the same large buffers (a 20 x 35 x 10k logits tensor
    is 28 MB) every time. glibc serves such blocks with fresh mmap()s or trims them off the heap
    when freed, so each step page-faults them back in, page by page. Keeping up to 1 GiB of
    freed memory ends it. It changes the whole process, so the command line calls it (``rnnlab
    train``), never a library constructor. Returns whether the setting took (Linux with glibc
    only; elsewhere it is a no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    # 32 MiB is the largest mmap threshold glibc accepts on 64-bit systems.
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))
