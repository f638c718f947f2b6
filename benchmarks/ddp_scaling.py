"""Training tokens/s of 1 vs 2 CPU processes (DDP over gloo), as JSON.

Three ways to spend two CPU cores on the same preset and global batch, each in a fresh process
for a fixed number of steps after a warm-up: one process with 1 thread, one process with 2
threads, and two processes of 1 thread each under torchrun (gloo, 127.0.0.1). Tokens/s counts
the global batch (every rank's rows), so the three figures compare directly.

    python benchmarks/ddp_scaling.py --preset synthetic --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from rnnlab import distributed, fast
from rnnlab.config_resolve import resolve_config
from rnnlab.lm.task import build_lm_task
from rnnlab.runtime import seed_everything, set_threads
from rnnlab.training.trainer import Trainer


def measure(preset: str, steps: int, warmup: int, threads: int,
            overrides: dict[str, Any]) -> dict[str, Any] | None:
    """Time ``steps`` training steps in this process (a rank when under torchrun)."""
    set_threads(threads)
    fast.set_up_training_process()  # as `rnnlab train` does
    config = resolve_config(preset=preset, overrides={
        **overrides, "train.device": "cpu", "train.threads": threads, "train.log_every": 0})
    with distributed.session("cpu") as device, tempfile.TemporaryDirectory() as run_dir:
        seed_everything(config.train.seed)
        trainer = Trainer(build_lm_task(config, device), config, run_dir, device)
        batches = trainer.task.batches(0)
        for _ in range(warmup):  # allocator, oneDNN primitive caches, DDP buckets
            trainer.train_step(next(batches))
        distributed.barrier()
        start, items = time.perf_counter(), trainer.running.items
        for _ in range(steps):
            trainer.train_step(next(batches))
        distributed.barrier()
        seconds = time.perf_counter() - start
        if not distributed.is_main():
            return None
        return {
            "processes": distributed.world_size(),
            "threads_per_process": threads,
            "global_batch": config.data.batch_size,
            "bptt": config.data.bptt,
            "steps": steps,
            "elapsed_s": seconds,  # unrounded, as every measured figure here
            "step_s": seconds / steps,
            "train_tokens_per_s": (trainer.running.items - items) / seconds,
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"benchmark run failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="synthetic")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # A smaller synthetic corpus than the preset's: generating it is not what is measured.
    overrides = {"data.synthetic_tokens": 200_000, **dict(s.split("=", 1) for s in args.set)}
    if args.worker:
        result = measure(args.preset, args.steps, args.warmup, args.threads, overrides)
        if result is not None:
            print(json.dumps(result))
        return
    worker = [__file__, "--worker", "--preset", args.preset, "--steps", str(args.steps),
              "--warmup", str(args.warmup), *(f"--set={s}" for s in args.set)]
    runs = {
        "1 process x 1 thread": _run([sys.executable, *worker, "--threads", "1"]),
        "1 process x 2 threads": _run([sys.executable, *worker, "--threads", "2"]),
        "2 processes x 1 thread (DDP, gloo)": _run([
            sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *worker,
            "--threads", "1"]),
    }
    rates = [r["train_tokens_per_s"] for r in runs.values()]
    print(json.dumps({
        "preset": args.preset,
        "cpu_cores": os.cpu_count(),
        "runs": runs,
        "ddp_over_1_thread": rates[2] / rates[0],
        "ddp_over_2_threads": rates[2] / rates[1],
    }, indent=2))


if __name__ == "__main__":
    main()
