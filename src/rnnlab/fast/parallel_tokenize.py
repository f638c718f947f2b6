"""Tokenising one large file on several cores: the same provisional ids as one pass.

The file is cut at line starts into one part per core (``line_spans``). This process tokenises
the first part with the shared table while worker processes each tokenise one of the others
with a table of their own (``python -m rnnlab.data.stream_tokenize``). Their ids are then
renumbered into the shared table, part by part in file order: a type new to the table gets the
next id there, which is exactly the id that one pass over the whole file would have given it
(its rank of first appearance), so the ids written are the same, byte for byte.
"""

from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

import rnnlab
from rnnlab.data.stream_tokenize import StreamTokenizer, line_spans
from rnnlab.errors import RnnlabError

MIN_PART_BYTES = 32 << 20  # below this a worker's start costs more than its share saves
_BLOCK = 1 << 24  # ids renumbered per read: bounded memory


def parts_for(path: str | Path, encoding: str) -> int:
    """How many parts to cut ``path`` into: one per usable core, none under ``MIN_PART_BYTES``;
    1 for an encoding in which a line-feed byte may be part of another character."""
    if codecs.lookup(encoding).name not in ("utf-8", "ascii") or not sys.executable:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, Path(path).stat().st_size // MIN_PART_BYTES))


def write_file_ids_in_parts(tokenizer: StreamTokenizer, path: str | Path, out: BinaryIO,
                            parts: int, encoding: str, chunk_bytes: int, work_dir: Path) -> int:
    """What ``tokenizer.write_ids(path, out)`` writes and returns, in ``parts`` processes. The
    workers' ids wait in ``work_dir`` until renumbered."""
    spans = line_spans(path, parts)
    workers: list[tuple[subprocess.Popen, str]] = []
    try:
        for start, stop in spans[1:]:
            fd, name = tempfile.mkstemp(prefix=".part.", suffix=".tmp", dir=work_dir)
            os.close(fd)
            workers.append((_start_worker(path, start, stop, tokenizer.level, encoding,
                                          chunk_bytes, name), name))
        count = tokenizer.write_ids(path, out, chunk_bytes, encoding, spans[0])
        saw_text = tokenizer.saw_text
        for process, name in workers:
            result = _result(process)
            _renumber(name, result["count"], result["types"], tokenizer, out)
            count += result["count"]
            saw_text = saw_text or result["saw_text"]
    finally:
        for process, name in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            Path(name).unlink(missing_ok=True)
    if not saw_text:
        raise RnnlabError(f"{path} is empty or only whitespace")
    return count


def _start_worker(path: str | Path, start: int, stop: int, level: str, encoding: str,
                  chunk_bytes: int, out_path: str) -> subprocess.Popen:
    # The worker imports rnnlab from where this process did, whatever its sys.path was.
    home = str(Path(rnnlab.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [home, *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "rnnlab.data.stream_tokenize", str(path), str(start),
               str(stop), level, encoding, str(chunk_bytes), out_path]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate()
    if process.returncode == 2:  # the user's error (bad bytes in the file), already one line
        raise RnnlabError(stderr.decode("utf-8", "replace").strip())
    if process.returncode != 0:  # killed (out of memory?) or broken: say so in one line
        last = (stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        raise RnnlabError(f"a tokenising worker failed (status {process.returncode}: {last}); "
                          "RNNLAB_FAST=0 tokenises in this process alone")
    return json.loads(stdout.decode("utf-8"))


def _renumber(name: str, size: int, types: list[str], tokenizer: StreamTokenizer,
              out: BinaryIO) -> None:
    """Append a worker's ``size`` ids to ``out`` in the shared table's numbering (new types
    join it in the worker's order of first appearance)."""
    shared = tokenizer.table.lookup(types).astype("<u4")
    for start in range(0, size, _BLOCK):
        ids = np.fromfile(name, dtype="<u4", count=min(_BLOCK, size - start), offset=4 * start)
        out.write(shared[ids].tobytes())
