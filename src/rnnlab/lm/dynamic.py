"""Dynamic evaluation: the weights adapt to the text as it is read (Krause et al., 2018,
"Dynamic Evaluation of Neural Sequence Models", the RMS-normalised update with a global prior).

The test stream is read once, in order, in segments of ``segment`` tokens; every segment is
scored with the current weights first and only then used for an update, so no token is ever
scored by weights that saw it. After the gradient ``g`` of the segment's mean NLL, every
parameter tensor moves by

    theta <- theta - lr * g / (sqrt(MS) + eps) + decay * min(RMS_norm, 1/decay) * (theta0 - theta)

where ``MS`` is the mean squared gradient of the same loss over training segments (computed
once, see ``gradient_stats``; a weight with no gradient there takes its tensor's mean),
``RMS_norm = sqrt(MS) / mean(sqrt(MS))`` (mean over every weight of the model) and ``theta0``
the trained weights: the paper's update "RMS with a global decay prior". The ``min`` keeps one
step from overshooting ``theta0``; with ``lr = 0`` the weights never move and the scores are
those of static evaluation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn import functional as F

from rnnlab.atomic import atomic_write_bytes
from rnnlab.errors import RnnlabError
from rnnlab.models.cells import State, map_state
from rnnlab.models.language_model import RNNLanguageModel

STATS_FILE = "dynamic-stats.safetensors"
STATS_TOKENS = 50_000  # training tokens read for the gradient statistics
STATS_CHUNKS = 10  # ... in this many evenly spaced pieces of the training split


@dataclass
class DynamicSettings:
    """Step size, decay towards the trained weights, and the update's segment length."""

    lr: float = 1e-3
    decay: float = 0.0
    eps: float = 1e-3
    segment: int = 20

    def validate(self) -> DynamicSettings:
        if not 0 <= self.lr < float("inf"):
            raise RnnlabError(f"the dynamic-evaluation lr must be >= 0 and finite, got {self.lr}")
        if not 0 <= self.decay <= 1:
            raise RnnlabError(f"the dynamic-evaluation decay must be in [0, 1], got {self.decay}")
        if self.segment < 1:
            raise RnnlabError(f"the segment length must be at least 1, got {self.segment}")
        if not self.eps > 0:
            raise RnnlabError(f"eps must be positive, got {self.eps}")
        return self


def target_log_probs(model: RNNLanguageModel, features: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
    """(T, D) output-layer features and (T,) targets -> (T,) log-probabilities of the targets."""
    if model.adaptive is not None:
        return model.adaptive(features, targets).output
    log_probs = F.log_softmax(model.decoder(features).float(), dim=-1)  # (T, V)
    return log_probs.gather(-1, targets[:, None]).squeeze(-1)


def segment_log_probs(model: RNNLanguageModel, inputs: torch.Tensor, targets: torch.Tensor,
                      state: State | None) -> tuple[torch.Tensor, torch.Tensor, State]:
    """(T,) inputs and targets of one stream -> (T,) target log-probs, (T, D) features, state."""
    features, state = model.features(inputs[None], state)  # (1, T, D)
    features = features[0]
    return target_log_probs(model, features, targets), features, state


def detach_state(state: State) -> State:
    return map_state(torch.Tensor.detach, state)


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes, by name: the statistics belong to these weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue  # packed quantized weights hold no plain tensor to hash
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gradient_stats(model: RNNLanguageModel, train_ids: torch.Tensor, segment: int,
                   tokens: int = STATS_TOKENS, progress: Callable[[int], None] | None = None,
                   ) -> dict[str, torch.Tensor]:
    """Mean squared gradient (MS) of the segment mean NLL, per parameter name, over up to
    ``tokens`` training tokens read in ``STATS_CHUNKS`` evenly spaced pieces (batch 1, the state
    carried within a piece, dropout off). ``progress(n)`` is told each segment done."""
    model.eval()
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    n = train_ids.numel() - 1
    if n < 1:
        raise RnnlabError("the training split is too short for gradient statistics")
    chunks = max(1, min(STATS_CHUNKS, n // max(segment, 1)))
    length = max(1, min(tokens, n) // chunks)
    count = 0
    for c in range(chunks):
        start = c * (n // chunks)
        piece = train_ids[start : start + length + 1].to(device=device, dtype=torch.long)
        state = None
        for s in range(0, piece.numel() - 1, segment):
            inputs, targets = piece[s : s + segment], piece[s + 1 : s + segment + 1]
            inputs = inputs[: targets.numel()]
            model.zero_grad(set_to_none=True)
            log_probs, _, state = segment_log_probs(model, inputs, targets, state)
            (-log_probs.mean()).backward()
            state = detach_state(state)
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += p.grad.detach() ** 2
            count += 1
            if progress is not None:
                progress(1)
    model.zero_grad(set_to_none=True)
    return {name: s / max(count, 1) for name, s in sums.items()}


def stats_segments(train_ids: torch.Tensor, segment: int, tokens: int = STATS_TOKENS) -> int:
    """How many segments ``gradient_stats`` will read (for a progress bar's total)."""
    n = train_ids.numel() - 1
    chunks = max(1, min(STATS_CHUNKS, n // max(segment, 1)))
    length = max(1, min(tokens, n) // chunks)
    return chunks * -(-min(length, n) // segment)


def load_stats(path: Path, digest: str, segment: int) -> dict[str, torch.Tensor] | None:
    """The statistics stored at ``path`` if they were made for these weights and segment."""
    if not path.is_file():
        return None
    try:
        raw = path.read_bytes()
        meta = json.loads(_metadata(raw).get("rnnlab", "{}"))
        if meta.get("weights_sha256") != digest or meta.get("segment") != segment:
            return None
        return load_safetensors(raw)
    except (OSError, ValueError):
        return None  # a damaged file is recomputed, not trusted


def save_stats(path: Path, stats: dict[str, torch.Tensor], digest: str, segment: int,
               tokens: int) -> None:
    meta = json.dumps({"weights_sha256": digest, "segment": segment, "tokens": tokens})
    tensors = {k: v.detach().cpu().contiguous() for k, v in stats.items()}
    atomic_write_bytes(path, save_safetensors(tensors, metadata={"rnnlab": meta}))


def _metadata(raw: bytes) -> dict[str, str]:
    header = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + header]).get("__metadata__", {})


def _fill_unseen(rms: torch.Tensor, overall: float) -> torch.Tensor:
    """RMS 0 (a weight no training segment moved, e.g. a word never read) would make its first
    step lr / eps: such weights take their tensor's mean RMS, or the model's if it has none."""
    seen = rms > 0
    if bool(seen.all()):
        return rms
    fill = float(rms[seen].mean()) if bool(seen.any()) else overall
    return rms.masked_fill(~seen, fill)


class DynamicUpdater:
    """Applies the update rule above to a model; ``restore()`` puts the trained weights back."""

    def __init__(self, model: RNNLanguageModel, stats: dict[str, torch.Tensor],
                 settings: DynamicSettings):
        self.model = model
        self.settings = settings.validate()
        self.params = dict(model.named_parameters())
        missing = set(self.params) - set(stats)
        if missing:
            raise RnnlabError(f"the gradient statistics lack {sorted(missing)[0]}")
        self.original = {n: p.detach().clone() for n, p in self.params.items()}
        rms = {n: stats[n].to(p.device, p.dtype).sqrt() for n, p in self.params.items()}
        total = sum(float(r.sum()) for r in rms.values())
        mean = total / max(1, sum(r.numel() for r in rms.values())) or 1.0
        rms = {n: _fill_unseen(r, mean) for n, r in rms.items()}
        self.scale = {n: 1.0 / (r + settings.eps) for n, r in rms.items()}
        cap = 1.0 / settings.decay if settings.decay > 0 else 0.0
        rate = {n: (r / mean).clamp(max=cap) * settings.decay for n, r in rms.items()}
        # theta + rate * (theta0 - theta) = keep * theta + pull, with both factors fixed: one
        # pass over the weights per step instead of three, which is most of an update's time.
        self.keep = {n: 1 - r for n, r in rate.items()}
        self.pull = {n: r * self.original[n] for n, r in rate.items()}

    @torch.no_grad()
    def step(self) -> None:
        """One update from the gradients now in ``.grad``; they are then cleared."""
        lr = self.settings.lr
        for name, p in self.params.items():
            if p.grad is not None and lr:
                p.addcmul_(p.grad, self.scale[name], value=-lr)
            if self.settings.decay:
                torch.addcmul(self.pull[name], p, self.keep[name], out=p)
            p.grad = None

    @torch.no_grad()
    def restore(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.original[name])
            p.grad = None
