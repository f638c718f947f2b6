"""int8 against fp32: batch-1 generation speed, perplexity on a split and model size.

    python benchmarks/int8.py RUN [--split test] [--tokens 200] [--rounds 3]

Prints one JSON object. The fp32 model runs as ``rnnlab generate`` runs it (fast paths on);
the int8 model with them off, as ``--quantize int8`` does (they read float weights).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rnnlab import fast
from rnnlab.api import LanguageModel
from rnnlab.quantize import quantize, size_bytes


def tokens_per_s(lm: LanguageModel, tokens: int, rounds: int, prompt: str) -> float:
    lm.generate(prompt, 5, seed=0)  # warm-up
    best = 0.0
    for r in range(rounds):
        start = time.perf_counter()
        lm.generate(prompt, tokens, seed=r)
        best = max(best, tokens / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-dir")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt", default="", help="default: a new sentence (word level)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fp32 = LanguageModel.load(args.run)
    int8 = LanguageModel.load(args.run)
    int8.model = quantize(int8.model, "int8")
    result = {"run": args.run, "split": args.split, "threads": args.threads}
    for name, lm, fast_on in (("fp32", fp32, True), ("int8", int8, False)):
        with fast.enabled_as(fast_on):
            result[name] = {
                "tokens_per_s": round(tokens_per_s(lm, args.tokens, args.rounds, args.prompt),
                                      1),
                "ppl": round(lm.evaluate(args.split, data_dir=args.data_dir)["ppl"], 3),
                "bytes": size_bytes(lm.model)}
    result["speed_ratio"] = round(result["int8"]["tokens_per_s"]
                                  / result["fp32"]["tokens_per_s"], 2)
    result["size_ratio"] = round(result["int8"]["bytes"] / result["fp32"]["bytes"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
