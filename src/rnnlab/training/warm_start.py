"""Start a new model from a finished run: word embeddings matched by spelling, recurrent
weights where the shapes agree.

The use in mind is ULMFiT's (Howard & Ruder, 2018) in its simplest form: a language model
trained on plentiful unlabelled text lends a classifier what it learnt about words, so the
classifier's few labelled examples go into the task rather than into learning English.
Only the forward direction of a recurrent layer is copied: a forward language model knows
nothing of reading backwards. Whether the recurrent weights help is an empirical question:
a language model's LSTM is tuned to predict the next word, and for IMDB sentiment the
embeddings alone gave the better classifier (see the imdb-bilstm preset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rnnlab import checkpoint as ckpt
from rnnlab.data.vocab import Vocab
from rnnlab.errors import RnnlabError


@dataclass
class WarmStart:
    """What was copied from ``source``: embedding rows (of how many) and recurrent tensors."""

    source: Path
    words: int
    vocab_size: int
    recurrent: list[str]

    def describe(self) -> str:
        layers = f" and {len(self.recurrent)} recurrent tensors" if self.recurrent else ""
        return (f"started from {self.source}: embeddings of {self.words:,} of {self.vocab_size:,} "
                f"words{layers}")


@dataclass
class Source:
    """A finished run's best weights, read before any data so that a bad path fails at once."""

    run_dir: Path
    cell: str
    vocab: Vocab
    tensors: dict[str, torch.Tensor]

    @classmethod
    def read(cls, run_dir: str | Path) -> Source:
        run_dir = Path(run_dir)
        config = ckpt.load_config(run_dir)
        vocab = Vocab.load(run_dir / ckpt.VOCAB)
        tensors = ckpt.read_weights(run_dir / ckpt.BEST)
        if "embedding.weight" not in tensors:
            raise RnnlabError(f"train.init_from: {run_dir} has no word embeddings to start from "
                              "(its model.input is not 'embedding')")
        return cls(run_dir, config.model.cell, vocab, tensors)


def warm_start(model: nn.Module, vocab: Vocab, source: Source,
               recurrent_weights: bool = True) -> WarmStart:
    """Copy ``source``'s weights into ``model`` (whose vocabulary is ``vocab``) in place.

    Words missing from the source keep their fresh initialisation. With ``recurrent_weights``,
    recurrent tensors are copied too when the source used the same cell and the tensor has the
    same name and shape (``rnn.weight_ih_l0`` etc.); reverse directions are left alone.
    """
    embedding = getattr(model, "embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise RnnlabError("train.init_from needs a model with word embeddings "
                          "(model.input = 'embedding')")
    source_embedding = source.tensors["embedding.weight"]
    if source_embedding.shape[1] != embedding.weight.shape[1]:
        raise RnnlabError(
            f"train.init_from: {source.run_dir} has {source_embedding.shape[1]}-dimensional "
            f"embeddings but this model's model.embedding_dim is {embedding.weight.shape[1]}")
    pairs = [(i, source.vocab.stoi[t]) for i, t in enumerate(vocab.itos) if t in source.vocab]
    recurrent = []
    with torch.no_grad():
        if pairs:
            rows = torch.tensor([i for i, _ in pairs], device=embedding.weight.device)
            source_rows = torch.tensor([j for _, j in pairs])
            embedding.weight[rows] = source_embedding[source_rows].to(embedding.weight)
        copy_recurrent = recurrent_weights and source.cell == model.config.cell
        for name, param in model.rnn.named_parameters():
            tensor = source.tensors.get(f"rnn.{name}")
            if copy_recurrent and "reverse" not in name and tensor is not None \
                    and tensor.shape == param.shape:
                param.copy_(tensor)
                recurrent.append(f"rnn.{name}")
    return WarmStart(source.run_dir, len(pairs), len(vocab), recurrent)
