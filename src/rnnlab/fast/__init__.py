"""Everything that exists only for speed, behind one switch.

Each fast path computes what a plain PyTorch expression computes (tests/test_fast.py trains,
evaluates and samples with the switch on and off and compares), only cheaper on a CPU:

- ``run_stack`` (stack.py): a stack with dropout between layers, run one layer at a time in
  training on a CPU so that the dropout can draw a cheaper 15-bit mask. It draws a different
  mask than ``nn.LSTM``'s dropout, so runs with that dropout agree only in distribution.
- ``linear_cross_entropy`` and ``logits_buffer`` (softmax_loss.py): the output layer and the
  cross-entropy fused, with fewer passes over the (tokens, vocabulary) logits, and evaluation's
  logits written into one buffer kept across windows.
- ``TokenStepper`` (stepper.py): generation's one-token step from (in, out) weight copies.
- ``clipped_step`` (optim.py): plain SGD takes gradient clipping as a scaled learning rate.
- ``write_file_ids_in_parts`` (parallel_tokenize.py): a large text file tokenised on every core,
  its parts' ids renumbered into the ids of one pass.
- ``keep_freed_memory`` (memory.py): glibc keeps freed memory, so large per-step buffers are
  not page-faulted back in; process-wide, so only the command line turns it on.

The switch is on by default. ``RNNLAB_FAST=0`` in the environment turns it off for the whole
process; ``train.fast = false`` turns it off for one run (``training.runner`` applies it while
the run lasts). Switched off, the model runs the plain PyTorch path: ``nn.LSTM`` called
directly, ``F.cross_entropy`` over the decoder's logits, ``model(ids)`` for every sampled token
and clipping by ``clip_grad_norm_``'s scaling.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_on = True  # set by set_enabled; the environment can still turn everything off


def env_allows() -> bool:
    """False when ``RNNLAB_FAST`` is set to 0 (or false, no, off)."""
    return os.environ.get("RNNLAB_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether the fast paths run: on unless ``set_enabled(False)`` or ``RNNLAB_FAST=0``."""
    return _on and env_allows()


def set_enabled(on: bool) -> None:
    """Turn the fast paths on or off for this process (``RNNLAB_FAST=0`` still wins)."""
    global _on
    _on = bool(on)


@contextmanager
def enabled_as(on: bool) -> Iterator[None]:
    """``set_enabled(on)`` for the duration of a ``with`` block, then the previous setting."""
    before = _on
    set_enabled(on)
    try:
        yield
    finally:
        set_enabled(before)


# Imported below the switch, so that the modules may read it from here.
from rnnlab.fast.memory import keep_freed_memory  # noqa: E402
from rnnlab.fast.optim import clipped_step  # noqa: E402
from rnnlab.fast.parallel_tokenize import parts_for, write_file_ids_in_parts  # noqa: E402
from rnnlab.fast.softmax_loss import linear_cross_entropy, logits_buffer  # noqa: E402
from rnnlab.fast.stack import run_stack  # noqa: E402
from rnnlab.fast.stepper import TokenStepper  # noqa: E402


def set_up_training_process() -> None:
    """The process-wide settings a training process makes when the fast paths are on (today:
    ``keep_freed_memory``). ``rnnlab train`` calls it, and so do the benchmarks that time a
    Trainer, so that they time what the command runs; a library constructor never does."""
    if enabled():
        keep_freed_memory()


__all__ = [
    "TokenStepper", "clipped_step", "enabled", "enabled_as", "env_allows", "keep_freed_memory",
    "linear_cross_entropy", "logits_buffer", "parts_for", "run_stack", "set_enabled",
    "set_up_training_process", "write_file_ids_in_parts",
]
