"""int8 inference: a trained model's recurrent and output layers with 8-bit weights.

Dynamic quantization (Jacob et al., 2018; PyTorch's ``quantize_dynamic``) stores the weights of
``nn.LSTM``, ``nn.GRU`` and ``nn.Linear`` as int8 with one scale per tensor and quantizes the
activations on the fly at each product, so no calibration data is needed. It is an inference
option, not a training one: the copy cannot be trained, and on a CPU its matrix products read a
quarter of the bytes. A plain RNN (``rnn_tanh``, ``rnn_relu``) has no int8 kernel in PyTorch:
only its output layer is quantized.

``torch.ao.quantization`` is deprecated upstream in favour of the separate ``torchao`` package;
it still ships with PyTorch, so rnnlab uses it rather than add a dependency.

The fast paths (``rnnlab.fast``) read float weight matrices that an int8 model no longer has:
callers run an int8 model with them off (the command line does so for ``--quantize int8``).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from rnnlab.errors import RnnlabError

QUANTIZE_CHOICES = ("none", "int8")


def quantize(model: nn.Module, mode: str | None) -> nn.Module:
    """``model`` itself for ``None``/``"none"``; for ``"int8"`` an int8 copy (CPU, eval mode)."""
    if mode in (None, "none"):
        return model
    if mode != "int8":
        raise RnnlabError(f"unknown quantization {mode!r}: choose one of "
                          f"{', '.join(QUANTIZE_CHOICES)}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise RnnlabError("int8 quantization runs on the CPU: load the model with --device cpu")
    model = copy.deepcopy(model).eval()
    if hasattr(model, "path"):  # a classifier: its dense path reads float weights by name
        model.path = "packed"
    with warnings.catch_warnings():  # the deprecation notices of torch.ao, see above
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.LSTM, nn.GRU, nn.Linear}, dtype=torch.qint8, inplace=False)


def is_quantized(model: nn.Module) -> bool:
    """Whether ``quantize`` made ``model`` (some layer holds int8 weights)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state: parameters and buffers, int8 weights packed as they are."""
    total = 0
    for value in model.state_dict().values():
        total += _nbytes(value)
    return total


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        if value.is_quantized:
            return value.int_repr().numel() * value.element_size()
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, torch.ScriptObject):  # packed int8 weights: unpack to count them
        try:
            return sum(_nbytes(v) for v in value.__getstate__())
        except Exception:  # noqa: BLE001 - a packing without a state: count nothing
            return 0
    return 0


def use_quantization(loaded: object, mode: str | None) -> None:
    """Replace a loaded ``LanguageModel``'s or ``TextClassifier``'s model by its int8 copy.

    For a whole process (the command line): the fast paths go off, since they read float
    weights.
    """
    if mode in (None, "none"):
        return
    from rnnlab import fast

    fast.set_enabled(False)
    loaded.model = quantize(loaded.model, mode)  # type: ignore[attr-defined]
