"""rnnlab: recurrent neural networks (RNN, LSTM, GRU) for text, on PyTorch.

The public API::

    import rnnlab
    config = rnnlab.resolve_config(preset="word-small", overrides={"data.corpus": "ptb"})
    result = rnnlab.train(config, "runs/ptb")
    lm = rnnlab.LanguageModel.load(result.run_dir)
    print(lm.generate("the meaning of life is", max_tokens=20, seed=1)[0])
"""

__version__ = "0.1.0"

from rnnlab.api import LanguageModel, TextClassifier  # noqa: E402
from rnnlab.config import (  # noqa: E402
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from rnnlab.config_resolve import resolve_config  # noqa: E402
from rnnlab.errors import RnnlabError  # noqa: E402
from rnnlab.generation import SampleConfig  # noqa: E402
from rnnlab.training.runner import resume, train  # noqa: E402

__all__ = [
    "DataConfig", "LanguageModel", "ModelConfig", "RnnlabError", "RunConfig", "SampleConfig",
    "TextClassifier", "TrainConfig", "__version__", "resolve_config", "resume", "train",
]
