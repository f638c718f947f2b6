"""Throughput of a language-model preset on this machine, as JSON.

Measures, in one run: this machine's float32 matmul FLOP/s; training tokens/s through the
Trainer's own step; evaluation tokens/s through the evaluator; generation tokens/s at batch 1
and 16 through the sampler. FLOPs count matmuls only: forward = 2 x (sum over layers of
gates*H x (input + H), plus the output layer) per token; training = 3 x forward. ``mfu`` is
achieved training FLOP/s over the measured matmul FLOP/s.

    python benchmarks/lm_throughput.py --preset word-medium
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from rnnlab.config import read_preset, resolve_config
from rnnlab.data.lm_data import LMData, load_lm_data
from rnnlab.data.vocab import Vocab
from rnnlab.generation import SampleConfig, generate_ids
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.runtime import resolve_device, set_threads
from rnnlab.training.lm_task import LanguageModelTask, evaluate_stream
from rnnlab.training.trainer import Trainer

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def matmul_flops_per_s(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best-of-3 float32 FLOP/s of a square matmul: the machine's practical peak."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = 0.0
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def forward_flops_per_token(model: RNNLanguageModel, targets: torch.Tensor) -> float:
    """2 x (recurrent matmuls + output matmuls) per token, as the issue counts them.

    With an adaptive softmax the head runs for every token but each tail cluster only for the
    targets that fall in it, so its cost is weighted by the share of ``targets`` in the cluster.
    """
    c = model.config
    gates = GATES[c.cell]
    input_size = model.vocab_size if c.input == "onehot" else c.embedding_dim
    recurrent = sum(gates * c.hidden_size * ((input_size if layer == 0 else c.hidden_size)
                                             + c.hidden_size) for layer in range(c.num_layers))
    output = c.hidden_size * c.embedding_dim if model.projection is not None else 0
    if model.adaptive is None:
        output += model.decoder.in_features * model.vocab_size
    else:
        asm = model.adaptive
        output += asm.in_features * asm.head_size
        for i, tail in enumerate(asm.tail):
            low, high = asm.cutoffs[i], asm.cutoffs[i + 1]
            share = float(((targets >= low) & (targets < high)).float().mean())
            projection, classifier = tail[0], tail[1]
            output += share * (projection.in_features * projection.out_features
                               + classifier.in_features * classifier.out_features)
    return 2.0 * (recurrent + output)


def zipf_ids(n: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids with word-like (Zipfian) frequencies, id 0 the most frequent."""
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(trainer: Trainer, task: LanguageModelTask, steps: int, warmup: int,
                   device) -> float:
    batches = task.batches(0)
    # Warm-up: oneDNN primitive caches and the allocator's heap. On the 2-core VM word-medium's
    # first steps took 682, 595, 548, 531, 524 ms before settling near 480, so 3 were too few.
    for _ in range(warmup):
        trainer.train_step(next(batches))
    _sync(device)
    start = time.perf_counter()
    tokens = 0
    for _ in range(steps):
        inputs, targets = next(batches)
        trainer.train_step((inputs, targets))
        tokens += targets.numel()
    _sync(device)
    return tokens / (time.perf_counter() - start)


def bench_generation(model: RNNLanguageModel, batch: int, tokens: int) -> float:
    config = SampleConfig(max_tokens=tokens, num_samples=batch, top_k=40, seed=1)
    list(generate_ids(model, [1, 2, 3], SampleConfig(max_tokens=5, num_samples=batch)))
    start = time.perf_counter()
    produced = sum(step.numel() for step in generate_ids(model, [1, 2, 3], config))
    return produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="word-small")
    parser.add_argument("--vocab-size", type=int,
                        help="default: 10,000 (PTB's) for word presets, "
                        "65 (Tiny Shakespeare's) for char presets")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="untimed training steps first")
    parser.add_argument("--gen-tokens", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir", help="read real PTB (char presets: Tiny Shakespeare) from "
                        "here instead of Zipfian ids")
    args = parser.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    overrides = dict(item.split("=", 1) for item in args.set)
    # A corpus of the preset's own level, so that char presets keep their character vocabulary.
    level = read_preset(args.preset).get("data", {}).get("level", "word")
    corpus = "tinyshakespeare" if level == "char" else "ptb"
    config = resolve_config(preset=args.preset, overrides={"data.corpus": corpus, **overrides})
    if args.data_dir:
        config.data.data_dir = args.data_dir
        data = load_lm_data(config.data)
        vocab = data.vocab
    else:
        generator = torch.Generator().manual_seed(0)
        vocab_size = args.vocab_size or (65 if config.data.level == "char" else 10_000)
        vocab = Vocab([f"w{i}" for i in range(vocab_size - 2)] + ["<unk>", "<eos>"])
        needed = (args.steps + args.warmup) * config.data.bptt * 2 * config.data.batch_size
        data = LMData(vocab, {"train": zipf_ids(needed, len(vocab), generator),
                              "valid": zipf_ids(100_000, len(vocab), generator)})
    peak_before = matmul_flops_per_s(device)
    torch.manual_seed(0)
    model = RNNLanguageModel(config.model, len(vocab)).to(device)
    task = LanguageModelTask(model, data, config, device)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(task, config, run_dir, device)
        train_tps = bench_training(trainer, task, args.steps, args.warmup, device)
    eval_ids = data.splits["valid"]
    evaluate_stream(model, eval_ids[:5000], config.data.eval_batch_size, config.data.bptt, device)
    start = time.perf_counter()
    _, count = evaluate_stream(model, eval_ids, config.data.eval_batch_size, config.data.bptt,
                               device)
    eval_tps = count / (time.perf_counter() - start)
    # The higher of two measurements, before and after: a peak caught in a slow moment of a
    # shared VM would flatter the mfu.
    peak = max(peak_before, matmul_flops_per_s(device))
    flops = forward_flops_per_token(model, data.splits["train"])
    result = {
        "preset": args.preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "data": config.data.corpus if args.data_dir else "zipfian ids",
        "vocab_size": len(vocab),
        "output": config.model.output,
        "batch_size": config.data.batch_size,
        "bptt": config.data.bptt,
        "eval_batch_size": config.data.eval_batch_size,
        "parameters": model.num_parameters(),
        "forward_flops_per_token": flops,
        "train_flops_per_token": 3 * flops,
        "matmul_flops_per_s": round(peak),
        "train_tokens_per_s": round(train_tps, 1),
        "train_flops_per_s": round(3 * flops * train_tps),
        "mfu": round(3 * flops * train_tps / peak, 4),
        "eval_tokens_per_s": round(eval_tps, 1),
        "eval_over_train": round(eval_tps / train_tps, 2),
        "generate_tokens_per_s_batch1": round(bench_generation(model, 1, args.gen_tokens), 1),
        "generate_tokens_per_s_batch16": round(bench_generation(model, 16, args.gen_tokens), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
