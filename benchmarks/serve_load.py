"""Load on ``rnnlab serve``: 16 concurrent streaming clients against one client alone.

Starts the server on 127.0.0.1 (a free port) with the given run, then streams ``--tokens``
tokens for one client, and for ``--clients`` clients at once. Prints one JSON object: the
aggregate tokens/s of each, their ratio (what continuous batching buys) and the median time to
first token, per round and as medians over the rounds. Bounded: every request has a timeout
and the server's start a deadline.

    python benchmarks/serve_load.py RUN [--clients 16] [--tokens 200] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def stream(host: str, port: int, body: dict) -> tuple[float, int, float]:
    """(time to first token, tokens, seconds) of one streamed generation, over its own
    connection.

    A small HTTP/1.1 client on asyncio streams: one event loop drives every client, so the
    load generator spends its CPU reading events rather than handing a GIL among threads
    (it shares the machine with the server).
    """
    payload = json.dumps(body).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /v1/generate HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                     % (host.encode(), len(payload), payload))
        status = await reader.readline()
        if status.split()[1:2] != [b"200"]:
            raise RuntimeError(f"the server answered {status.decode().strip()}: "
                               f"{(await reader.read()).decode(errors='replace')[-300:]}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            chunked |= name.strip().lower() == "transfer-encoding" and "chunked" in value
        first, tokens, pending = None, 0, b""
        async for data in _body(reader, chunked):
            *events, pending = (pending + data).split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: "):
                    continue
                parsed = json.loads(event[6:])
                if "error" in parsed:
                    raise RuntimeError(parsed["error"])
                if "text" in parsed:
                    tokens += 1
                    first = first if first is not None else time.perf_counter() - start
        return first or 0.0, tokens, time.perf_counter() - start
    finally:
        writer.close()


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The response body as it arrives, its chunked transfer coding undone."""
    if not chunked:
        while data := await reader.read(1 << 16):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        yield (await reader.readexactly(size + 2))[:-2]


def run_clients(url: str, clients: int, body: dict, timeout: float) -> dict:
    host, port = url.rsplit("//", 1)[-1].split(":")

    async def everyone() -> list[tuple[float, int, float]]:
        return await asyncio.gather(*(
            asyncio.wait_for(stream(host, int(port), {**body, "seed": i}), timeout)
            for i in range(clients)))

    start = time.perf_counter()
    results = asyncio.run(everyone())
    wall = time.perf_counter() - start
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
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="passed on to rnnlab serve, e.g. --serve-arg=--quantize=int8")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of one client alone, then all at once; medians reported")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "rnnlab", "serve", args.run, "--port", str(port), "--threads",
         str(args.threads), "--log-level", "warning",
         "--max-concurrent", str(max(64, args.clients + 1)), *args.serve_arg])
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
        run_clients(url, 1, {**body, "max_tokens": 5}, args.timeout)  # warm-up
        rounds = []
        for _ in range(args.rounds):  # alternated, so that a drift of the VM's speed hits both
            alone = run_clients(url, 1, body, args.timeout)
            together = run_clients(url, args.clients, body, args.timeout)
            rounds.append({"alone": alone, "concurrent": together, "ratio": round(
                together["tokens_per_s"] / alone["tokens_per_s"], 2)})
        print(json.dumps({
            "run": args.run, "threads": args.threads, "serve_args": args.serve_arg,
            "clients": args.clients, "tokens": args.tokens, "rounds": rounds,
            "alone_tokens_per_s": statistics.median(r["alone"]["tokens_per_s"] for r in rounds),
            "concurrent_tokens_per_s": statistics.median(
                r["concurrent"]["tokens_per_s"] for r in rounds),
            "concurrent_p50_ttft_ms": statistics.median(
                r["concurrent"]["p50_ttft_ms"] for r in rounds),
            "throughput_ratio": statistics.median(r["ratio"] for r in rounds)}))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
