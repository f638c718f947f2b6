"""Device choice, seeding and threads: written once, used by training, evaluation and sampling."""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnlab.errors import RnnlabError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, then Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RnnlabError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RnnlabError(f"device '{name}' requested but CUDA is not available")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise RnnlabError(f"device '{name}' requested but only {count} GPU(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RnnlabError("device 'mps' requested but MPS is not available")
    return device


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (0 keeps PyTorch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG stream a run draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": (version, list(mt_state), gauss),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# --- mixed precision and host-to-device copies ---------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes in bf16 natively (AVX512-BF16, AMX or Arm's BF16 extension).

    Elsewhere PyTorch emulates bf16 on the CPU, which is slower than plain fp32.
    """
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if getattr(torch.cpu, check, lambda: False)():
            return True
    try:  # Arm on Linux lists the extension as "bf16" among the CPU features
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any("bf16" in line.split(":", 1)[-1].split()
               for line in cpuinfo.splitlines() if line.lower().startswith("features"))


def autocast_dtype(precision: str, device: torch.device, *, warn: bool = True
                   ) -> torch.dtype | None:
    """The dtype that autocast should compute in for ``precision`` on ``device``; None: fp32.

    fp16 needs CUDA (where a gradient scaler keeps small gradients from flushing to zero); bf16
    needs a GPU or CPU that computes it natively. Anywhere else the run trains in fp32 and says
    so in one warning, rather than failing: a preset written for a GPU still runs on a laptop.
    """
    if precision == "fp32":
        return None
    if precision == "auto":  # bf16 only where it is native: emulated bf16 is slower than fp32
        native = (torch.cuda.is_bf16_supported(including_emulation=False)
                  if device.type == "cuda" else device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda":
        if dtype == torch.float16 or torch.cuda.is_bf16_supported(including_emulation=False):
            return dtype
        reason = "this GPU has no native bf16 (it needs an Ampere or newer GPU)"
    elif device.type == "cpu" and dtype == torch.bfloat16:
        if cpu_has_native_bf16():
            return dtype
        reason = "this CPU has no native bf16 (AVX512-BF16, AMX or Arm BF16)"
    else:
        reason = f"{precision} is supported on CUDA" + (
            " and on CPUs with native bf16" if dtype == torch.bfloat16 else "")
    if warn:
        warnings.warn(f"train.precision = {precision}: {reason}; training in fp32", stacklevel=2)
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or nothing for fp32 (``dtype`` None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (tuples, lists, dicts, dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(map_tensors(fn, x) for x in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, x) for x in obj)
    if isinstance(obj, dict):
        return {key: map_tensors(fn, value) for key, value in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(fn, getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def pin_batch(batch: Any) -> Any:
    """``batch`` with its CPU tensors in page-locked memory, ready for a CUDA copy.

    A copy from ordinary (pageable) memory makes the host wait for the GPU to drain its queue;
    from pinned memory ``tensor.to(device, non_blocking=True)`` is queued and the host moves on.
    Tensors already on a device are left alone.
    """
    return map_tensors(lambda t: t.pin_memory() if t.device.type == "cpu" else t, batch)
