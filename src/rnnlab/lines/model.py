"""A language model over whole lines: every line read from a fresh state, padding never scored.

:class:`LineLanguageModel` is an :class:`RNNLanguageModel` (same layers, same ``state_dict``
keys, so sampling, the fast one-token stepper and the checkpoint code work unchanged) plus two
things a batch of lines of different lengths needs:

* ``token_nll(inputs, targets, lengths, labels)``: the NLL of each real target, (B, T) with
  zeros at the pads. Two execution paths give the same numbers, as in the classifier: a
  ``PackedSequence`` (cuDNN runs it fused: the path on CUDA) and dense right-padded input (on a
  CPU only dense input reaches the fast kernels). Right padding cannot reach a real position of
  a forward-only stack: pads come after every real token of their row, and their outputs are
  masked out of the loss.
* an optional label embedding that sets the initial state (see ``initial_state``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rnnlab import fast
from rnnlab.config import ModelConfig
from rnnlab.errors import RnnlabError
from rnnlab.models.cells import State
from rnnlab.models.language_model import RNNLanguageModel

PATHS = ("auto", "packed", "dense")


class LineLanguageModel(RNNLanguageModel):
    """A recurrent language model of lines, optionally conditioned on one label per line.

    A label conditions the model through its INITIAL STATE: a learned embedding of the label
    gives every layer's starting ``h`` (and an LSTM's ``c``), (layers, B, H) each. The
    recurrence then carries the label to every step at no cost per step, and the input layer
    stays the token embedding alone, so the fast stack and the one-token sampling step are used
    as they are. The alternative, the label's embedding concatenated to every input (Mikolov &
    Zweig, 2012, "Context dependent recurrent neural network language model"), costs a wider
    input matmul at each step; feeding the condition as the start of the sequence is what
    Vinyals et al. (2015, "Show and tell") do with image features.

    ``num_labels = 0``: no label, every line starts from the zero state.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, num_labels: int = 0, *,
                 path: str = "auto"):
        super().__init__(config, vocab_size)
        if path not in PATHS:
            raise RnnlabError(f"path must be one of {', '.join(PATHS)}; got '{path}'")
        self.path = path
        self.num_labels = num_labels
        self.label_embedding = None
        if num_labels:
            parts = 2 if config.cell == "lstm" else 1  # an LSTM's state is (h, c)
            size = parts * config.num_layers * config.hidden_size
            self.label_embedding = nn.Embedding(num_labels, size)
            nn.init.uniform_(self.label_embedding.weight, -0.1, 0.1)

    def initial_state(self, labels: torch.Tensor | None, batch_size: int,
                      device: torch.device | str) -> State | None:
        """The state every line starts from: the label's embedding, else ``None`` (zeros).

        ``labels``: (B,) class ids, or ``None`` for an unconditioned model.
        """
        if self.label_embedding is None:
            if labels is not None:
                raise RnnlabError("this model was not trained with labels")
            return None
        if labels is None:
            raise RnnlabError("this model is conditioned on a label: give one")
        layers, hidden = self.config.num_layers, self.config.hidden_size
        flat = self.label_embedding(labels.to(device))  # (B, parts * layers * H)
        state = flat.view(labels.shape[0], -1, layers, hidden).permute(1, 2, 0, 3)
        state = state.contiguous()  # (parts, layers, B, H)
        return (state[0], state[1]) if self.config.cell == "lstm" else state[0]

    def line_features(self, inputs: torch.Tensor, lengths: torch.Tensor,
                      state: State | None = None) -> torch.Tensor:
        """(B, T) input ids with (B,) lengths -> (B, T, D) output-layer inputs.

        Positions ``t >= lengths[b]`` hold garbage (dense) or zeros (packed); callers mask them.
        """
        packed = self.path == "packed" or (self.path == "auto" and inputs.is_cuda)
        if not packed:
            return self.features(inputs, state)[0]
        x = self.input_dropout(self.encode(inputs))  # (B, T, E)
        seq = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                enforce_sorted=False)
        out, _ = self.rnn(seq, state)  # the module puts the state in the packed order itself
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=x.shape[1])
        out = self.output_dropout(out)  # (B, T, H)
        return out if self.projection is None else self.projection(out)

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) NLL in nats of each target; 0 where ``t >= lengths[b]`` (padding)."""
        state = self.initial_state(labels, inputs.shape[0], inputs.device)
        out = self.line_features(inputs, lengths, state)  # (B, T, D)
        mask = _mask(lengths, inputs.shape[1], inputs.device)  # (B, T)
        real = out[mask]  # (N, D): the output layer never sees a pad
        picked = targets[mask]  # (N,)
        if self.adaptive is not None:
            nll = -self.adaptive(real, picked).output
        else:
            nll = F.cross_entropy(self.decoder(real), picked, reduction="none")
        return torch.zeros(mask.shape, dtype=nll.dtype, device=nll.device).masked_scatter(
            mask, nll)

    def mean_nll(self, inputs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL over the real targets of a batch: the training loss."""
        if self.adaptive is not None or not fast.enabled():
            nll = self.token_nll(inputs, targets, lengths, labels)
            return nll.sum() / lengths.sum().to(nll.device)
        state = self.initial_state(labels, inputs.shape[0], inputs.device)
        out = self.line_features(inputs, lengths, state)
        mask = _mask(lengths, inputs.shape[1], inputs.device)
        # fast path: output layer and loss fused (rnnlab.fast.softmax_loss)
        return fast.linear_cross_entropy(out[mask], self.decoder.weight, self.decoder.bias,
                                         targets[mask], "mean")


def _mask(lengths: torch.Tensor, steps: int, device: torch.device) -> torch.Tensor:
    lengths = lengths.to(device)
    return torch.arange(steps, device=device)[None, :] < lengths[:, None]  # (B, T)

