"""Data-parallel training over several processes with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc_per_node=N -m rnnlab train ...`` starts N copies of the command and gives each
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address); :func:`session` reads
them, joins the process group (gloo on the CPU, nccl on CUDA, one GPU per ``LOCAL_RANK``) and
leaves it at the end. Without torchrun every function here acts as for one process, so library
code calls them unconditionally.

How a run is shared out:

- Every rank reads the same data and walks the same sequence of *global* batches
  (``data.batch_size`` is the global batch); rank r trains on rows ``[r*B/W, (r+1)*B/W)`` of
  each. DDP averages the gradients, which is the full batch's mean gradient because every rank's
  loss is a mean over an equal share (uneven shares are re-weighted, see :func:`local_batch`),
  so W ranks follow a one-process run with batch B up to floating-point rounding.
- Only rank 0 writes files (checkpoints, metrics, config, run info) and prints.
- Every rank evaluates the whole split, which keeps the ranks in step (a rank waiting on another
  rank's long evaluation would hit the collective timeout), and rank 0's result is broadcast, so
  best-checkpoint, plateau and early-stop decisions are the same everywhere by construction.
- Saved state is independent of the number of ranks: weights and optimiser state are the same on
  every rank, and a carried hidden state is gathered into the full global batch before saving.
  A run may therefore resume with a different number of processes.

Tasks: one whose state is carried per row of the batch (the language model's hidden state)
takes its rows in ``shard(rank, world)`` (returning True) and then yields only them; for a task
whose ``shard`` returns False (the classifier) the Trainer cuts each global batch with
:func:`local_batch`, which needs every tensor of a batch to hold one row per example along
dimension 0.

Dropout: each rank other than 0 reseeds its random stream (:func:`seed_rank`), so a
multi-process run is reproducible but draws other masks than a one-process run; the two agree to
rounding only without dropout. On several machines, each needs the data and, to resume, the run
directory at the same path (a shared file system, or a copy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rnnlab.errors import RnnlabError
from rnnlab.runtime import map_tensors, resolve_device

# --- who am I ----------------------------------------------------------------------------------


def launched() -> bool:
    """True when torchrun (or a compatible launcher) started this process with others."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True once this process has joined a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes training together (1 until the process group is joined)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank; torchrun's ``RANK`` before the group is joined, else 0."""
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def local_rank() -> int:
    """This process's index on its machine (which GPU it drives)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main() -> bool:
    """True on the one process that writes files and prints (rank 0)."""
    return rank() == 0


# --- joining and leaving -----------------------------------------------------------------------


def process_device(name: str = "auto") -> torch.device:
    """The device of this process: ``name`` resolved, with CUDA pinned to ``LOCAL_RANK``."""
    device = resolve_device(name)
    if not launched():
        return device
    if device.type == "mps":
        raise RnnlabError("torchrun with MPS is not supported; use --device cpu")
    if device.type != "cuda":
        return device
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.index is not None and per_node > 1:
        raise RnnlabError(f"--device {name} would put all {per_node} processes of this machine on "
                          "one GPU; use --device cuda (process i takes cuda:LOCAL_RANK)")
    index = device.index if device.index is not None else local_rank()
    count = torch.cuda.device_count()
    if index >= count:
        raise RnnlabError(f"cuda:{index} does not exist: this machine has {count} GPU(s); "
                          f"start at most --nproc_per_node={count}")
    return torch.device("cuda", index)


@contextmanager
def session(device_name: str = "auto") -> Iterator[torch.device]:
    """Join the process group for the duration of a run (a no-op without torchrun).

    Yields this process's device. On a clean exit the ranks meet at a barrier, so none leaves
    while another still needs it; the group is destroyed only if this call created it (a script
    that joined a group itself keeps it).
    """
    device = process_device(device_name)
    owned = False
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl and object collectives use the current device
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        owned = True
    try:
        yield device
        barrier()
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on each machine's first process, then on the others.

    For work that fills a cache, such as downloading a corpus: one process per machine does it
    and the others then find it done (per machine, because machines need not share a disk).
    A failure in the block on any rank raises on every rank (an RnnlabError with its message),
    where a plain barrier would leave the others waiting until the collective timeout.
    """
    first = local_rank() == 0
    if not first:
        _share_failure(None)  # wait for the first processes; raises if one of them failed
    try:
        yield
    except BaseException as exc:
        _share_failure(str(exc) or type(exc).__name__, mine=True)
        raise
    _share_failure(None)
    if first:
        _share_failure(None)  # the other processes' outcome


def _share_failure(message: str | None, mine: bool = False) -> None:
    """Every rank's failure message (None: none), gathered; raise the first one of another rank."""
    if not is_distributed():
        return
    reports: list[Any] = [None] * world_size()
    dist.all_gather_object(reports, message)
    failed = [report for report in reports if report is not None]
    if failed and not mine:
        raise RnnlabError(failed[0])


def from_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` computed on rank 0 alone, its result on every rank.

    For reads of files that only rank 0 is sure to see (ranks need not share a disk). If ``fn``
    fails, rank 0 raises its error and every other rank an RnnlabError with its message.
    """
    if not is_distributed():
        return fn()
    outcome: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - reported to the others, then raised here
            error, outcome = exc, ("error", str(exc) or type(exc).__name__)
    outcome = broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise RnnlabError(outcome[1])
    return outcome[1]


# --- collectives -------------------------------------------------------------------------------


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank, in place (and returned)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_rows(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Every rank's equal-sized ``tensor`` concatenated along ``dim`` in rank order."""
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=dim)


# --- sharing out batches -----------------------------------------------------------------------


def row_slice(total: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of ``total`` rows: ``[r*total/W, (r+1)*total/W)``."""
    return slice(total * rank // world, total * (rank + 1) // world)


def equal_rows(total: int, rank: int, world: int, what: str) -> slice:
    """Like :func:`row_slice`, but ``total`` must split evenly (for state carried per row)."""
    if total % world:
        raise RnnlabError(f"{what} = {total} cannot be split evenly over {world} processes; "
                          f"use a multiple of {world}")
    return row_slice(total, rank, world)


def local_batch(batch: Any, rank: int, world: int) -> tuple[Any, float]:
    """This rank's rows of a global batch, and the weight its mean loss must be scaled by.

    Every tensor in ``batch`` (a tensor, or tuples, lists, dicts and dataclasses of them) must
    hold one row per example along dimension 0. With ``n`` examples and ``n_r`` on this rank
    the weight is ``n_r * W / n``: DDP averages the ranks' gradients, and
    ``1/W * sum_r (n_r W / n) * mean_r = sum / n`` is the full batch's mean even when ``n`` does
    not divide by ``W`` (the last batch of an epoch). A rank left with no example still runs one
    row with weight 0, because every rank must take part in the gradient all-reduce.
    """
    sizes = {t.shape[0] for t in _tensors(batch) if t.dim() > 0}
    if len(sizes) != 1:
        raise RnnlabError("cannot share this batch across processes: its tensors do not agree on "
                          "the number of examples (dimension 0); make the task's "
                          "shard(rank, world) take this rank's batches itself")
    total = sizes.pop()
    rows = row_slice(total, rank, world)
    weight = (rows.stop - rows.start) * world / total
    if rows.stop == rows.start:
        rows = slice(0, 1)
    return map_tensors(lambda t: t[rows] if t.dim() > 0 else t, batch), weight


def _tensors(obj: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []

    def collect(tensor: torch.Tensor) -> torch.Tensor:
        found.append(tensor)
        return tensor

    map_tensors(collect, obj)
    return found


# --- the model ---------------------------------------------------------------------------------


class TaskLoss(nn.Module):
    """A module whose ``forward(batch)`` is the task's training loss, so that DDP can wrap it.

    DDP arms its gradient all-reduce inside its own ``forward``; a loss computed by another
    method (the language model's ``nll``) would bypass it. Wrapping the task's loss as the forward
    pass routes every training step through DDP while ``task.model`` stays the plain module that
    is evaluated and saved (its parameter names are unchanged).
    """

    def __init__(self, task: Any):
        super().__init__()
        self.model = task.model  # registered, so DDP sees (and broadcasts) its parameters
        self.task = task  # not a Module: a plain attribute

    def forward(self, batch: Any) -> tuple[torch.Tensor, int]:
        return self.task.train_loss(batch)


def wrap_loss(task: Any, device: torch.device) -> nn.Module:
    """``task.train_loss`` as a module, inside DistributedDataParallel when there are ranks."""
    module = TaskLoss(task)
    if not is_distributed():
        return module
    # An adaptive softmax skips the clusters a batch does not reach, so some parameters get no
    # gradient on some steps; DDP must then look for them (it costs a graph walk per step).
    unused = any(isinstance(m, nn.AdaptiveLogSoftmaxWithLoss) for m in task.model.modules())
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
    )


def seed_rank(seed: int, step: int) -> None:
    """Give every rank but 0 its own random stream from here on (dropout masks).

    All ranks are seeded alike so that they build the same model; left so, rank r's row i would
    get the same dropout mask as rank 0's row i. Rank 0 keeps the stream that checkpoints save;
    the others derive theirs from (seed, rank, step), so a resumed run is deterministic too.
    """
    if is_distributed() and rank() > 0:
        state = np.random.SeedSequence([seed % 2**32, rank(), step]).generate_state(1, np.uint64)[0]
        torch.manual_seed(int(state) % 2**63)
