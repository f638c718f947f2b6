"""TokenStepper: the decoding step run from (in, out) weight copies equals the model's own step."""

from __future__ import annotations

import pytest
import torch

from rnnlab.config import ModelConfig
from rnnlab.fast.stepper import TokenStepper
from rnnlab.models.language_model import RNNLanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 40

VARIANTS = {
    "lstm": {"cell": "lstm"},
    "gru": {"cell": "gru"},
    "rnn_tanh": {"cell": "rnn_tanh"},
    "rnn_relu": {"cell": "rnn_relu"},
    "one-layer": {"cell": "lstm", "num_layers": 1},
    "tied-with-projection": {"cell": "lstm", "tie_weights": True, "hidden_size": 24},
    "onehot-input": {"cell": "gru", "input": "onehot"},
    "adaptive-output": {"cell": "lstm", "output": "adaptive", "cutoffs": [10, 20]},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_steps_match_the_model_over_a_sequence(name: str) -> None:
    options = {"embedding_dim": 16, "hidden_size": 16, "num_layers": 2, "dropout": 0.3,
               "tie_weights": False, **VARIANTS[name]}
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(**options), VOCAB).eval()  # eval: dropout off
    with torch.no_grad():  # larger weights than the init so the gates saturate and differ
        for param in model.rnn.parameters():
            param.mul_(3)
    tokens = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = model(tokens)  # (3, 9, V): one pass over the whole sequences
        logits, state = model(tokens[:, :1])
        stepper = TokenStepper(model)
        got = [logits[:, 0]]
        for t in range(1, tokens.shape[1]):
            step_logits, state = stepper.step(tokens[:, t], state)
            got.append(step_logits)
    torch.testing.assert_close(torch.stack(got, dim=1), expected, rtol=0, atol=1e-5)

