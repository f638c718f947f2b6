"""Throughput of a language-model preset on this machine, as JSON.

Measures, in one run: this machine's float32 matmul FLOP/s; training tokens/s through the
Trainer's own step; evaluation tokens/s through the evaluator; generation tokens/s at batch 1
and 16 through the sampler. FLOPs count matmuls only: forward = 2 x (sum over layers of
gates*H x (input + H), plus the output layer) per token; training = 3 x forward. ``mfu`` is
achieved training FLOP/s over the measured matmul FLOP/s.

A shared VM's speed drifts within a minute, so the ratios are taken from measurements made side
by side: rounds of a few training steps, one evaluation of the whole validation stream (PTB's
validation split, or Zipfian ids as many, so that an evaluation's one-off costs, such as
faulting in its logits buffer, weigh as they do in use) and a peak reading. ``mfu`` is the
median over rounds of the round's training FLOP/s over the higher of the two peak readings
around it, ``eval_over_train`` the median of each round's ratio; ``matmul_flops_per_s`` is the
median of all the peak readings. Figures are printed unrounded, in seconds and per second.

With ``--baseline`` each round also trains the same model the textbook way in plain PyTorch
(``plain_lm.py``) for as many steps; ``speedup_over_plain`` is the median of each round's ratio
of rnnlab's training tokens/s to the plain loop's.

    python benchmarks/lm_throughput.py --preset word-medium [--baseline]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from plain_lm import PlainTrainer
from rnnlab import fast
from rnnlab.config import RunConfig
from rnnlab.config_resolve import read_preset, resolve_config
from rnnlab.data.vocab import Vocab
from rnnlab.generation import SampleConfig, generate_ids
from rnnlab.lm.data import LMData, load_lm_data
from rnnlab.lm.evaluation import evaluate_stream
from rnnlab.lm.task import LanguageModelTask
from rnnlab.models.language_model import RNNLanguageModel
from rnnlab.runtime import resolve_device, set_threads
from rnnlab.training.trainer import Trainer

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
PTB_VALID_TOKENS = 73_760  # the evaluation stream: PTB's validation split, <eos> included


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


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows: figures differ by machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def forward_flops_per_token(model: RNNLanguageModel, targets: torch.Tensor) -> float:
    """2 x (recurrent matmuls + output matmuls) per token, as the module's docstring counts them.

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


def preset_config(preset: str, overrides: dict[str, str]) -> RunConfig:
    """The preset's config for PTB, or for Tiny Shakespeare if it is a char preset: a corpus of
    its own level, so that a char preset keeps its character vocabulary."""
    level = read_preset(preset).get("data", {}).get("level", "word")
    corpus = "tinyshakespeare" if level == "char" else "ptb"
    return resolve_config(preset=preset, overrides={"data.corpus": corpus, **overrides})


def stand_in_vocab(config: RunConfig, size: int | None) -> Vocab:
    """A vocabulary of ``size`` made-up words (default: PTB's 10,000, or 65 for a char preset)."""
    size = size or (65 if config.data.level == "char" else 10_000)
    return Vocab([f"w{i}" for i in range(size - 2)] + ["<unk>", "<eos>"])


def zipf_ids(n: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids with word-like (Zipfian) frequencies, id 0 the most frequent."""
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], int], steps: int, device) -> tuple[int, float]:
    """Targets trained on and seconds taken by ``steps`` calls of ``step`` (each returns its
    number of targets)."""
    _sync(device)
    start = time.perf_counter()
    tokens = sum(step() for _ in range(steps))
    _sync(device)
    return tokens, time.perf_counter() - start


def trainer_step(trainer: Trainer, batches: Iterator) -> Callable[[], int]:
    """One step of rnnlab's own Trainer on the next batch, as a ``timed_steps`` step."""
    def step() -> int:
        inputs, targets = next(batches)
        trainer.train_step((inputs, targets))
        return targets.numel()
    return step


def timed_evaluation(model: RNNLanguageModel, ids: torch.Tensor, config, device
                     ) -> tuple[int, float]:
    """Targets scored and seconds taken by the evaluator over ``ids``."""
    start = time.perf_counter()
    _, count = evaluate_stream(model, ids, config.data.eval_batch_size, config.data.bptt, device)
    _sync(device)
    return count, time.perf_counter() - start


def bench_rounds(trainer: Trainer, task: LanguageModelTask, eval_ids: torch.Tensor, config,
                 device, *, train_flops: float, steps: int, rounds: int, warmup: int,
                 plain_step: Callable[[], int] | None = None) -> dict[str, Any]:
    """Training, evaluation and the matmul peak (and the plain loop, when ``plain_step`` is
    given) measured in alternation (see the module's docstring); ``train_flops`` is the
    training FLOPs per token."""
    train_step = trainer_step(trainer, task.batches(0))
    # Warm-up: oneDNN primitive caches and the allocator's heap take several steps to settle.
    timed_steps(train_step, warmup, device)
    timed_evaluation(task.model, eval_ids[:5000], config, device)
    if plain_step is not None:
        timed_steps(plain_step, warmup, device)
    peaks = [matmul_flops_per_s(device)]
    train, evaluation, plain = [], [], []
    parts = _split(steps, rounds)
    for part in parts:
        train.append(timed_steps(train_step, part, device))
        if plain_step is not None:
            plain.append(timed_steps(plain_step, part, device))
        evaluation.append(timed_evaluation(task.model, eval_ids, config, device))
        peaks.append(matmul_flops_per_s(device))
    train_tps = [tokens / seconds for tokens, seconds in train]
    eval_tps = [tokens / seconds for tokens, seconds in evaluation]
    around = [max(before, after) for before, after in zip(peaks, peaks[1:], strict=False)]
    measured: dict[str, Any] = {}
    if plain:
        plain_tps = [tokens / seconds for tokens, seconds in plain]
        measured = {
            "plain_train_tokens_per_s": sum(t for t, _ in plain) / sum(s for _, s in plain),
            "speedup_over_plain": statistics.median(
                ours / theirs for ours, theirs in zip(train_tps, plain_tps, strict=True)),
        }
    return measured | {
        "train_tokens_per_s": sum(t for t, _ in train) / sum(s for _, s in train),
        "eval_tokens_per_s": sum(t for t, _ in evaluation) / sum(s for _, s in evaluation),
        "peaks": peaks,
        "mfu": statistics.median(train_flops * tps / peak
                                 for tps, peak in zip(train_tps, around, strict=True)),
        "eval_over_train": statistics.median(e / t for e, t in zip(eval_tps, train_tps,
                                                                    strict=True)),
    }


def _split(total: int, parts: int) -> list[int]:
    """``total`` steps as ``parts`` near-equal positive counts."""
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


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
    parser.add_argument("--steps", type=int, default=30, help="timed training steps in all")
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternations of training, evaluation and peak reading")
    parser.add_argument("--warmup", type=int, default=10, help="untimed training steps first")
    parser.add_argument("--gen-tokens", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir", help="read real PTB (char presets: Tiny Shakespeare) from "
                        "here instead of Zipfian ids")
    parser.add_argument("--baseline", action="store_true",
                        help="also time the same model trained in plain PyTorch (plain_lm.py)")
    args = parser.parse_args()
    set_threads(args.threads)
    fast.set_up_training_process()  # as `rnnlab train` does
    device = resolve_device(args.device)
    overrides = dict(item.split("=", 1) for item in args.set)
    config = preset_config(args.preset, overrides)
    if args.data_dir:
        config.data.data_dir = args.data_dir
        data = load_lm_data(config.data)
        vocab = data.vocab
    else:
        generator = torch.Generator().manual_seed(0)
        vocab = stand_in_vocab(config, args.vocab_size)
        needed = (args.steps + args.warmup) * config.data.bptt * 2 * config.data.batch_size
        data = LMData(vocab, {"train": zipf_ids(needed, len(vocab), generator),
                              "valid": zipf_ids(PTB_VALID_TOKENS, len(vocab), generator)})
    torch.manual_seed(0)
    model = RNNLanguageModel(config.model, len(vocab)).to(device)
    task = LanguageModelTask(model, data, config, device)
    flops = forward_flops_per_token(model, data.splits["train"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(task, config, run_dir, device)
        plain_step = None
        if args.baseline:
            plain_step = PlainTrainer(config, len(vocab), data.splits["train"].to(device)).step
        measured = bench_rounds(trainer, task, data.splits["valid"], config, device,
                                train_flops=3 * flops, steps=args.steps, rounds=args.rounds,
                                warmup=args.warmup, plain_step=plain_step)
    peaks = measured["peaks"]
    result = {
        "preset": args.preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "data": config.data.corpus if args.data_dir else "zipfian ids",
        "vocab_size": len(vocab),
        "output": config.model.output,
        "batch_size": config.data.batch_size,
        "bptt": config.data.bptt,
        "eval_batch_size": config.data.eval_batch_size,
        "parameters": model.num_parameters(),
        "forward_flops_per_token": flops,
        "train_flops_per_token": 3 * flops,
        # Measured figures are not rounded: on a fast machine rounding can turn them into 0.
        "matmul_flops_per_s": statistics.median(peaks),
        "matmul_flops_per_s_range": [min(peaks), max(peaks)],
        "train_tokens_per_s": measured["train_tokens_per_s"],
        "train_flops_per_s": 3 * flops * measured["train_tokens_per_s"],
        "mfu": measured["mfu"],
        "eval_tokens_per_s": measured["eval_tokens_per_s"],
        "eval_over_train": measured["eval_over_train"],
        "generate_tokens_per_s_batch1": bench_generation(model, 1, args.gen_tokens),
        "generate_tokens_per_s_batch16": bench_generation(model, 16, args.gen_tokens),
    }
    if args.baseline:
        result["plain_train_tokens_per_s"] = measured["plain_train_tokens_per_s"]
        result["speedup_over_plain"] = measured["speedup_over_plain"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
