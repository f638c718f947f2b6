"""rnnlab: recurrent neural networks (RNN, LSTM, GRU) for text, on PyTorch.

The public API::

    import rnnlab
    config = rnnlab.resolve_config(preset="word-small", overrides={"data.corpus": "ptb"})
    result = rnnlab.train(config, "runs/ptb")
    lm = rnnlab.LanguageModel.load(result.run_dir)
    print(lm.generate("the meaning of life is", max_tokens=20, seed=1)[0])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name's module, imported when the name is first used: a process that needs only a
# part of rnnlab (a tokenising worker, say) does not pay two seconds for importing torch.
_HOMES = {
    "LanguageModel": "rnnlab.api", "TextClassifier": "rnnlab.api",
    "DataConfig": "rnnlab.config", "ModelConfig": "rnnlab.config", "RunConfig": "rnnlab.config",
    "TrainConfig": "rnnlab.config", "resolve_config": "rnnlab.config_resolve",
    "RnnlabError": "rnnlab.errors", "SampleConfig": "rnnlab.generation",
    "resume": "rnnlab.training.runner", "train": "rnnlab.training.runner",
}

if TYPE_CHECKING:
    from rnnlab.api import LanguageModel, TextClassifier
    from rnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from rnnlab.config_resolve import resolve_config
    from rnnlab.errors import RnnlabError
    from rnnlab.generation import SampleConfig
    from rnnlab.training.runner import resume, train


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rnnlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "DataConfig", "LanguageModel", "ModelConfig", "RnnlabError", "RunConfig", "SampleConfig",
    "TextClassifier", "TrainConfig", "__version__", "resolve_config", "resume", "train",
]
