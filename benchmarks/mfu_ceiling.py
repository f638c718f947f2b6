"""How high a preset's training mfu can go with PyTorch's own kernels on this machine, as JSON.

A training step's FLOPs, as ``lm_throughput.py`` counts them, are done by two kinds of kernel:
the recurrent stack's (oneDNN's fused LSTM/GRU on a CPU, cuDNN's on a GPU) and the output
layer's three matmuls (the logits, their gradient with respect to the features, the weight
gradient). This script times only those, at the preset's shapes, forward and backward, as if
everything else in a step (embedding, dropout, softmax, loss, clipping, optimiser, Python) took
no time at all. ``ceiling_mfu`` is the step's FLOPs over that time over the matmul peak: no
implementation that keeps these kernels can train faster. In the same rounds it times rnnlab's
own training step, so ``share_of_ceiling`` (the median of each round's mfu over its ceiling)
says how much of the possible rnnlab reaches, measured side by side on one machine.

    python benchmarks/mfu_ceiling.py --preset word-medium
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable

import torch

from lm_throughput import (
    cpu_name,
    forward_flops_per_token,
    matmul_flops_per_s,
    preset_config,
    stand_in_vocab,
    timed_steps,
    trainer_step,
    zipf_ids,
)
from rnnlab import fast
from rnnlab.lm.data import LMData
from rnnlab.lm.task import LanguageModelTask
from rnnlab.models.cells import make_rnn
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.runtime import resolve_device, set_threads
from rnnlab.training.trainer import Trainer


def recurrent_pass(model: RNNLanguageModel, batch: int, bptt: int, device
                   ) -> Callable[[], int]:
    """Forward and backward of a stack shaped like ``model``'s, no dropout: its kernels alone."""
    c = model.config
    input_size = model.vocab_size if c.input == "onehot" else c.embedding_dim
    rnn = make_rnn(c.cell, input_size, c.hidden_size, c.num_layers).to(device)
    x = torch.randn(batch, bptt, input_size, device=device, requires_grad=True)
    grad_out = torch.randn(batch, bptt, c.hidden_size, device=device)

    def run() -> int:
        out, _ = rnn(x, None)
        out.backward(grad_out)
        return batch * bptt
    return run


def output_pass(model: RNNLanguageModel, rows: int, device) -> Callable[[], int]:
    """The output layer's matmuls, forward and backward (and the projection's, if any)."""
    shapes = [(model.decoder.in_features, model.vocab_size)]
    if model.projection is not None:
        shapes.append((model.config.hidden_size, model.config.embedding_dim))
    tensors = [(torch.randn(rows, d_in, device=device), torch.randn(d_out, d_in, device=device),
                torch.randn(rows, d_out, device=device)) for d_in, d_out in shapes]

    def run() -> int:
        for features, weight, grad in tensors:
            features @ weight.t()  # forward
            grad @ weight  # gradient of the features
            grad.t() @ features  # gradient of the weight
        return rows
    return run


def seconds_per_call(run: Callable[[], int], calls: int, device) -> float:
    return timed_steps(run, calls, device)[1] / calls


def summary(rounds: list[tuple[float, float, float]], peaks: list[float], step_flops: float
            ) -> dict[str, float]:
    """Medians over rounds of (recurrent, output, step) seconds; each round's mfu and ceiling
    against the higher of the two peak readings around it."""
    around = [max(before, after) for before, after in zip(peaks, peaks[1:], strict=False)]
    ceilings = [step_flops / (rec + out) / peak
                for (rec, out, _), peak in zip(rounds, around, strict=True)]
    mfus = [step_flops / step / peak for (_, _, step), peak in zip(rounds, around, strict=True)]
    # Unrounded: a fast machine's output matmuls take well under a tenth of a millisecond.
    return {
        "recurrent_s": statistics.median(r[0] for r in rounds),
        "output_matmuls_s": statistics.median(r[1] for r in rounds),
        "train_step_s": statistics.median(r[2] for r in rounds),
        "ceiling_mfu": statistics.median(ceilings),
        "mfu": statistics.median(mfus),
        "share_of_ceiling": statistics.median(m / c for m, c in zip(mfus, ceilings, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="word-medium")
    parser.add_argument("--vocab-size", type=int,
                        help="default: 10,000 (PTB's) for word presets, 65 for char presets")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="per round, of each kind")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    set_threads(args.threads)
    fast.set_up_training_process()  # as `rnnlab train` does
    device = resolve_device(args.device)
    overrides = dict(item.split("=", 1) for item in args.set)
    config = preset_config(args.preset, overrides)
    if config.model.output != "softmax":
        parser.error("the ceiling is worked out for the full softmax output layer only")
    vocab = stand_in_vocab(config, args.vocab_size)
    generator = torch.Generator().manual_seed(0)
    batch, bptt = config.data.batch_size, config.data.bptt
    needed = (args.rounds + 1) * (args.steps + args.warmup) * bptt * 2 * batch
    data = LMData(vocab, {"train": zipf_ids(needed, len(vocab), generator)})
    torch.manual_seed(0)
    model = RNNLanguageModel(config.model, len(vocab)).to(device)
    task = LanguageModelTask(model, data, config, device)
    step_flops = 3 * forward_flops_per_token(model, data.splits["train"]) * batch * bptt
    recurrent = recurrent_pass(model, batch, bptt, device)
    output = output_pass(model, batch * bptt, device)
    with tempfile.TemporaryDirectory() as run_dir:
        train_step = trainer_step(Trainer(task, config, run_dir, device), task.batches(0))
        runs = (recurrent, output, train_step)
        for run in runs:
            seconds_per_call(run, args.warmup, device)
        peaks = [matmul_flops_per_s(device)]
        rounds = []
        for _ in range(args.rounds):
            rounds.append(tuple(seconds_per_call(run, args.steps, device) for run in runs))
            peaks.append(matmul_flops_per_s(device))
    print(json.dumps({
        "preset": args.preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "vocab_size": len(vocab),
        "batch_size": batch,
        "bptt": bptt,
        "train_flops_per_step": step_flops,
        "matmul_flops_per_s_range": [min(peaks), max(peaks)],
    } | summary(rounds, peaks, step_flops), indent=2))


if __name__ == "__main__":
    main()
