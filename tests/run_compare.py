"""Comparing two runs: same weights bit for bit, same evaluation records up to timing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"tensors differ after resuming: {different}"


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    timing = {"elapsed", "eval_seconds", "tokens_per_s", "items_per_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records]
