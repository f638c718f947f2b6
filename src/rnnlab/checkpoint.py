"""The run directory: everything needed to use or resume a model, written crash-safely.

Layout::

    RUN/config.json            resolved RunConfig + format version
    RUN/vocab.json             the vocabulary (and label names for classifiers)
    RUN/model.safetensors      best weights on validation (what `load` uses)
    RUN/last-<step>.safetensors  latest weights, for resuming
    RUN/trainer.pt             optimiser, schedule, step, RNG, data position; names its weights file
    RUN/metrics.jsonl          one JSON line per evaluation
    RUN/run.json               versions, device, command line, summary

Every file is written to a temporary file in the same directory, fsynced, then renamed over the
old one, so a crash at any moment leaves the previous version intact. ``trainer.pt`` is replaced
only after the weights it names are complete: it is the commit point of a checkpoint.
Loading never unpickles code: weights come from safetensors and ``trainer.pt`` is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

# The writer lives in rnnlab.atomic, shared with the data files; re-exported for callers here.
from rnnlab.atomic import atomic_open, atomic_write_bytes, atomic_write_text  # noqa: F401
from rnnlab.config import RunConfig
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError
from rnnlab.runtime import resolve_device

CONFIG = "config.json"
VOCAB = "vocab.json"
BEST = "model.safetensors"
TRAINER = "trainer.pt"
METRICS = "metrics.jsonl"
TRAIN_LOG = "train_log.jsonl"
RUN_INFO = "run.json"


# --- weights -------------------------------------------------------------------------------


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with shared (tied) tensors stored once, contiguous, on the CPU."""
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.numel() and tensor.data_ptr() in seen:
            continue  # a tied weight: the module itself restores the sharing on load
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors


def save_weights(model: nn.Module, path: str | Path,
                 metadata: dict[str, str] | None = None) -> None:
    """Write the weights as safetensors; non-finite weights are refused (the old file stays)."""
    path = Path(path)
    tensors = model_tensors(model)
    broken = [name for name, tensor in tensors.items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:
        raise RnnlabError(f"refused to write {path}: {', '.join(broken[:3])} holds NaN or "
                          f"infinite values (the previous file is untouched)")
    # Serialised in memory and written by our own atomic write: safetensors' save_file (0.8)
    # writes through a temporary ``.tmpXXXXXX`` file of its own in the same directory, which a
    # crash would leave behind under a name our clean-up cannot tell from a user's file.
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU; clear errors for missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise RnnlabError(f"weights file not found: {path}")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise RnnlabError(f"{path} is corrupted or not a safetensors file ({exc})") from None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model``; clear errors for missing, corrupt or mismatched."""
    path = Path(path)
    load_tensors(model, read_weights(path), path)


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load tensors read from ``path`` into ``model``, with :func:`load_weights`' checks."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors and not _is_tied(model, k)]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise RnnlabError(
            f"{path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise RnnlabError(
                f"{path}: {name} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(expected[name].shape)} (does the vocabulary match the weights?)"
            )
    model.load_state_dict(tensors, strict=False)


def _is_tied(model: nn.Module, key: str) -> bool:
    """True when ``key`` names a tensor that shares storage with an earlier one."""
    return key not in model_tensors(model)


# --- trainer state -------------------------------------------------------------------------


def save_trainer_state(state: dict[str, Any], path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read ``trainer.pt`` without executing code (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise RnnlabError(f"{path} not found: nothing to resume from")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":  # torch.save's zip format; a bare pickle is never unpickled
        raise RnnlabError(f"{path} is corrupted or not a checkpoint written by rnnlab "
                          f"(refused to load it: not a PyTorch zip archive)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's advice on weights_only is not for our users
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(exc))  # a class or function to import
        if blocked:
            raise RnnlabError(
                f"{path} holds Python objects ({blocked.group(1)}), not plain data: refused to "
                f"load it, since unpickling them could run code (was the file replaced?)"
            ) from None
        raise RnnlabError(f"{path} is corrupted (refused to load it: {_first_line(exc)})"
                          ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure is a damaged file to the user
        raise RnnlabError(f"{path} is corrupted or truncated ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise RnnlabError(f"{path} is corrupted (it does not hold a trainer state)")
    return state


def _first_line(exc: BaseException) -> str:
    """The gist of an error: its first sentence (torch's messages go on with advice)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__


# --- config and run info -------------------------------------------------------------------


def save_config(config: RunConfig, run_dir: str | Path) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RnnlabError(f"run directory not found: {run_dir}")
    path = run_dir / CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RnnlabError(f"{run_dir} is not a run directory ({CONFIG} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RnnlabError(f"{path} is corrupted (not valid JSON)") from None
    if not isinstance(raw, dict):
        raise RnnlabError(f"{path} is corrupted (not a JSON object)")
    return RunConfig.from_dict(raw, source=str(path)).validate()


def load_run_config(run_dir: str | Path, task: str, what: str) -> tuple[Path, RunConfig]:
    """A run directory and its config, refused unless it holds a ``task`` run (``what``: how
    the error names one, e.g. "a language model")."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if config.task != task:
        raise RnnlabError(f"{run_dir} holds a {config.task} run, not {what}")
    return run_dir, config


def load_run_weights(model: nn.Module, run_dir: Path, which: str, device: str) -> nn.Module:
    """``model`` with the run's ``which`` weights (``"best"`` or ``"last"``), on ``device``."""
    load_weights(model, weights_path(run_dir, which))
    return model.to(resolve_device(device))


def weights_path(run_dir: Path, which: str) -> Path:
    """The weights a loaded model uses: ``"best"`` (on validation) or the ``"last"`` checkpoint."""
    if which == "best":
        path = run_dir / BEST
        if not path.exists():
            raise RnnlabError(f"{run_dir} has no {BEST} yet (no evaluation finished)")
        return path
    if which == "last":
        state = load_trainer_state(run_dir / TRAINER)
        return run_dir / state["weights"]
    raise RnnlabError(f"weights must be 'best' or 'last', got {which!r}")


def save_artifacts(run_dir: str | Path, vocab: Vocab,
                   label_names: Sequence[str] | None = None) -> None:
    """Write ``RUN/vocab.json``: the vocabulary, plus ``labels`` (class names by class id) for a
    classifier. ``Vocab.load`` reads either as a plain vocabulary, ignoring ``labels``."""
    payload = vocab.to_dict()
    if label_names is not None:
        payload["labels"] = list(label_names)
    atomic_write_text(Path(run_dir) / VOCAB, json.dumps(payload, ensure_ascii=False))


def load_artifacts(run_dir: str | Path) -> tuple[Vocab, list[str] | None]:
    """The vocabulary and the class names written by :func:`save_artifacts` (``None`` for a
    run that saved none, as a language model's does)."""
    path = Path(run_dir) / VOCAB
    vocab = Vocab.load(path)
    labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
    return vocab, [str(label) for label in labels] if isinstance(labels, list) else None


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RnnlabError(f"{path} is corrupted (not valid JSON)") from None


def read_metrics(run_dir: str | Path, name: str = METRICS) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (or another log); a torn line from a crash is ignored."""
    path = Path(run_dir) / name
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_metrics(run_dir: str | Path, record: dict[str, Any], name: str = METRICS) -> None:
    """Append one JSON line (flushed and fsynced: a crash loses at most the line being written)."""
    path = Path(run_dir) / name
    with open(path, "a+b") as handle:
        # After a crash mid-line, start on a new line: glued to the torn one this record would
        # be unreadable too.
        torn = handle.seek(0, os.SEEK_END) > 0 and not _ends_with_newline(handle)
        handle.write((("\n" if torn else "") + json.dumps(record) + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def _ends_with_newline(handle: Any) -> bool:
    handle.seek(-1, os.SEEK_END)
    return handle.read(1) == b"\n"


def truncate_log(run_dir: str | Path, step: int, name: str = METRICS) -> None:
    """Keep the records of steps up to ``step`` (a resumed run writes the later ones again).

    A crash between a log line and the checkpoint that follows it would otherwise leave that
    line twice, and a torn last line is dropped too. The file is rewritten only when needed.
    """
    path = Path(run_dir) / name
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and (
                record["step"] > step):
            continue
        kept.append(line)
    if kept != lines:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def remove_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the ``.NAME.XXXX.tmp`` files of writes that a crash cut short; returns them."""
    removed = []
    for tmp in Path(run_dir).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
