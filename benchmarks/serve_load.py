"""Load on ``rnnlab serve``: 16 concurrent streaming clients against one client alone.

Starts the server on 127.0.0.1 (a free port) with the given run, then streams ``--tokens``
tokens for one client, and for ``--clients`` clients at once. Prints one JSON object: the
aggregate tokens/s of each, their ratio (what continuous batching buys) and the median time to
first token. Bounded: every request has a timeout and the whole run a deadline.

    python benchmarks/serve_load.py RUN [--clients 16] [--tokens 200] [--prompt TEXT]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(client: httpx.Client, url: str, body: dict) -> tuple[float, int, float]:
    """(time to first token, tokens, seconds) of one streamed generation.

    The client is made beforehand: building one (its TLS context, its pool) costs tens of
    milliseconds of the load generator's CPU, which is not the server's latency.
    """
    start = time.perf_counter()
    first, tokens = None, 0
    with client.stream("POST", f"{url}/v1/generate", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"])
            if "text" in event:
                tokens += 1
                first = first if first is not None else time.perf_counter() - start
    return first or 0.0, tokens, time.perf_counter() - start


def run_clients(url: str, clients: int, body: dict, timeout: float) -> dict:
    sessions = [httpx.Client(timeout=timeout) for _ in range(clients)]
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            results = list(pool.map(lambda i: stream(sessions[i], url, {**body, "seed": i}),
                                    range(clients)))
        wall = time.perf_counter() - start
    finally:
        for session in sessions:
            session.close()
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "tokens": tokens, "seconds": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1),
            "p50_ttft_ms": round(1000 * statistics.median(r[0] for r in results), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--prompt", default="", help="default: a new sentence (word level)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "rnnlab", "serve", args.run, "--port", str(port), "--threads",
         str(args.threads), "--log-level", "warning",
         "--max-concurrent", str(max(64, args.clients + 1))])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        body = {"prompt": args.prompt, "max_tokens": args.tokens, "stream": True}
        with httpx.Client(timeout=args.timeout) as client:
            stream(client, url, {**body, "max_tokens": 5})  # warm-up
        alone = run_clients(url, 1, body, args.timeout)
        together = run_clients(url, args.clients, body, args.timeout)
        print(json.dumps({"run": args.run, "alone": alone, "concurrent": together,
                          "throughput_ratio": round(together["tokens_per_s"]
                                                    / alone["tokens_per_s"], 2)}))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
