"""Keeping freed memory in the process (rnnlab.fast.memory): a large freed block stays in
the heap for the next step instead of going back to the system."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

_HEAP_SCRIPT = """
import ctypes, sys, torch
from rnnlab.fast.memory import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = libc.mallinfo2()
buffer = torch.ones(5 << 20)  # 20 MiB, the size of a small model's logits
mapped = libc.mallinfo2().hblkhd - before.hblkhd
del buffer
print(mapped, libc.mallinfo2().arena - before.arena)
"""


def _untuned_malloc_env() -> dict[str, str]:
    """This process's environment without what tunes glibc's malloc (``MALLOC_*`` variables,
    ``glibc.malloc.*`` tunables) or replaces it (``LD_PRELOAD``): the test needs its defaults."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key != "LD_PRELOAD"}
    tunables = [item for item in env.pop("GLIBC_TUNABLES", "").split(":")
                if item and not item.startswith("glibc.malloc.")]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
@pytest.mark.parametrize("mode", ["default", "keep"])
def test_freed_memory_stays_in_the_heap_for_the_next_step(mode: str) -> None:
    done = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT, mode], capture_output=True,
                          text=True, check=True, env=_untuned_malloc_env())
    mapped, heap_growth = map(int, done.stdout.split())  # bytes, over the buffer's life
    if mode == "default":  # glibc maps a block this large and unmaps it when freed...
        assert mapped >= 20 << 20 and heap_growth < 4 << 20
    else:  # ...while kept, it comes from the heap and stays there, ready for the next step
        assert mapped < 4 << 20 and heap_growth >= 16 << 20
