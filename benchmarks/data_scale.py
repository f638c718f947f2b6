"""Data at scale: preparing, mapping and training on corpora of 10M to 1B tokens.

For each size, a word-level corpus (Zipfian over ``--types`` word types, lines of ~20 words)
and a character-level one (a Zipfian alphabet, lines of ~80 characters) are written under
``--work-dir`` (default: a temporary folder, removed afterwards). Each measurement runs in a
fresh child process so that its peak RSS (``getrusage``) is its own:

* ``prepare``: first-time preparation (``rnnlab.data.prepared``): wall, tokens/s, peak RSS
  (this process's, and the largest of its tokenising workers');
* ``cached_start`` (word corpora, word-small), with the prepared corpus already on disk (a second
  run): ``ready_s``, process start to the first training step (corpus mapped, model and
  optimiser built), and ``first_step_s``, to the end of that step: the median of ``--repeats``
  runs, beside ``torch_start_s``, what any PyTorch training process pays before it reads data
  (process start to ``import torch`` and a first ``torch.optim.AdamW``);
* ``train``: peak RSS of a short training run on the mapped corpus (word-small, or char-rnn at
  character level); it must not grow with the corpus.

Over more than 65,536 word types the word-small children use an adaptive input and output.

Usage: python benchmarks/data_scale.py [--sizes 10M,100M[,1B]] [--types N] [--levels word,char]
       [--work-dir DIR] [--steps N] [--repeats N]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SUFFIX = {"K": 10**3, "M": 10**6, "B": 10**9}
BLOCK = 5_000_000  # tokens generated per write: bounded memory at every size

# Run in the children: json.dumps of a dict on the last line of stdout.
# The children's config: the word-small recipe (char-rnn at character level) on the corpus. Over
# a vocabulary of hundreds of thousands of words the output layer and the embedding are adaptive
# (Grave et al., 2017; Baevski & Auli, 2019), as large-vocabulary recipes make them: a full
# softmax over 250k words would need 20 x 35 x 250k logits and their gradients, 1.4 GB, at every
# step, and a full 250k x 200 table is 50M parameters, most of them for words seen a few times.
# A third band from rank 100,000 keeps a rare word's step from computing all 230k tail logits.
CONFIG = """
import rnnlab
def config(text, level, root, steps=1):
    adaptive = {"model.output": "adaptive", "model.input": "adaptive",
                "model.cutoffs": [2000, 20000, 100000], "model.tie_weights": False,
                } if level == "word" and LARGE_VOCAB else {}
    return rnnlab.resolve_config(
        preset="word-small" if level == "word" else "char-rnn", overrides={
            "data.text_path": text, "data.level": level, "data.data_dir": root,
            "data.prepared": "always", "train.device": "cpu", "train.threads": 1,
            "train.max_steps": steps, "train.log_every": 0, **adaptive})
"""
ADAPTIVE_ABOVE = 65_536  # word types from which the children's word-small is adaptive

PREPARE = CONFIG + """
import json, resource, sys, time
from rnnlab.lm.data import prepared_data
text, level, root = sys.argv[1:4]
start = time.perf_counter()
prepared = prepared_data(config(text, level, root).data)
wall = time.perf_counter() - start
tokens = sum(ids.numel() for ids in prepared.splits.values())
print(json.dumps({"status": prepared.status, "wall_s": round(wall, 2), "tokens": tokens,
                  "tokens_per_s": round(tokens / wall), "vocab": len(prepared.vocab),
                  "dtype": str(prepared.splits["train"].dtype),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "worker_peak_rss_mb": resource.getrusage(
                      resource.RUSAGE_CHILDREN).ru_maxrss // 1024}))
"""

TRAIN = """
import json, os, resource, sys, time
launched = float(sys.argv[5])
""" + CONFIG + """
from rnnlab.training.trainer import Callback
text, level, root, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Stop(Callback):
    def on_train_start(self, trainer):
        self.ready = time.time() - launched

    def on_step(self, trainer, loss):
        if trainer.step == 1:
            self.first = time.time() - launched
        if trainer.step >= steps:
            print(json.dumps({"ready_s": round(self.ready, 2), "first_step_s": round(self.first, 2),
                              "steps": trainer.step,
                              "peak_rss_mb": resource.getrusage(
                                  resource.RUSAGE_SELF).ru_maxrss // 1024}), flush=True)
            os._exit(0)

rnnlab.train(config(text, level, root, steps), os.path.join(root, "run"), callbacks=[Stop()])
"""

# The floor under every cached start: the optimiser's first method call imports torch._dynamo.
TORCH_START = """
import json, sys, time
launched = float(sys.argv[1])
import torch
torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
print(json.dumps({"torch_start_s": round(time.time() - launched, 2)}))
"""


def parse_size(text: str) -> int:
    text = text.strip().upper()
    return int(float(text[:-1]) * SUFFIX[text[-1]]) if text[-1] in SUFFIX else int(text)


def zipf_sampler(n: int, exponent: float, rng: np.random.Generator):
    """Draws of ranks 0..n-1 with P(r) proportional to 1 / (r + 1) ** exponent."""
    cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** exponent)
    cdf /= cdf[-1]
    return lambda size: np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


def write_words(path: Path, tokens: int, types: int, seed: int = 0) -> None:
    """About ``tokens`` tokens (words and line ends) of Zipfian words, ~20 per line."""
    rng = np.random.default_rng(seed)
    draw = zipf_sampler(types, 1.0, rng)
    names = np.array([f"w{np.base_repr(i, 36).lower()}" for i in range(types)], dtype=object)
    with open(path, "w", encoding="utf-8") as out:
        left = tokens
        while left > 0:
            n = max(1, min(BLOCK, left * 20 // 21))  # ~1 in 21 tokens is a line end
            words = names[draw(n)]
            ends = np.cumsum(rng.integers(10, 31, size=n // 10 + 2))
            ends = ends[ends < n]
            lines = np.split(words, ends)
            out.write("\n".join(" ".join(line) for line in lines if line.size) + "\n")
            left -= n + len(lines)  # every line adds one <eos> token


def write_chars(path: Path, chars: int, seed: int = 0) -> None:
    """``chars`` characters from a Zipfian alphabet of 90 printable ones, ~80 per line."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(bytes(range(33, 123)), np.uint8)
    draw = zipf_sampler(alphabet.size, 1.0, rng)
    with open(path, "wb") as out:
        left = chars
        while left > 0:
            n = min(BLOCK, left)
            block = alphabet[draw(n)]
            block[rng.random(n) < 1 / 80] = ord("\n")
            block[rng.random(n) < 1 / 6] = ord(" ")
            out.write(block.tobytes())
            left -= n


def child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh, niced Python; its last stdout line as JSON."""
    done = subprocess.run(["nice", "-n", "19", sys.executable, "-c", code, *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(runs: list[dict], keys: tuple[str, ...]) -> dict:
    """The median of each key over ``runs``, and every run's values: start times vary by a
    second from one run to the next on a shared machine."""
    return {**{key: statistics.median(run[key] for run in runs) for key in keys},
            "runs": [{key: run[key] for key in keys} for run in runs]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M,100M", help="comma-separated, e.g. 10M,100M,1B")
    parser.add_argument("--types", type=int, default=250_000, help="word types of the corpus")
    parser.add_argument("--steps", type=int, default=5, help="training steps for the RSS")
    parser.add_argument("--work-dir", help="keep the corpora here (default: a temporary folder)")
    parser.add_argument("--levels", default="word,char", help="word, char or both")
    parser.add_argument("--repeats", type=int, default=5, help="cached starts (median)")
    args = parser.parse_args(argv)
    large = args.types > ADAPTIVE_ABOVE
    prepare_code, train_code = (f"LARGE_VOCAB = {large}\n{code}" for code in (PREPARE, TRAIN))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rnnlab-data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"types": args.types, "word_layers": "adaptive input and output" if large
                     else "embedding and softmax",
                     "sizes": {}}
    try:
        for size_text in args.sizes.split(","):
            size = parse_size(size_text)
            row: dict = {}
            for level in args.levels.split(","):
                path = work / f"{level}-{size_text.strip()}.txt"
                start = time.perf_counter()
                if level == "word":
                    write_words(path, size, args.types)
                else:
                    write_chars(path, size)
                root = str(work / f"data-{level}-{size_text.strip()}")
                entry = {"bytes": path.stat().st_size,
                         "generate_s": round(time.perf_counter() - start, 1),
                         "prepare": child(prepare_code, str(path), level, root)}
                if level == "word":
                    entry["cached_start"] = medians(
                        [{**child(TORCH_START, repr(time.time())),  # beside it: the same noise
                          **child(train_code, str(path), level, root, "1", repr(time.time()))}
                         for _ in range(args.repeats)],
                        ("torch_start_s", "ready_s", "first_step_s"))
                entry["train"] = child(train_code, str(path), level, root, str(args.steps),
                                       repr(time.time()))
                row[level] = entry
                print(json.dumps({size_text.strip(): {level: entry}}), file=sys.stderr)
                path.unlink()
                shutil.rmtree(root, ignore_errors=True)
            results["sizes"][size_text.strip()] = row
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
