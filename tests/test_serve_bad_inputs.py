"""Bad requests get a 4xx with a one-line reason, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
httpx = pytest.importorskip("httpx")

from rnnlab.serve.app import create_app  # noqa: E402
from rnnlab.serve.limits import Guard, Limits  # noqa: E402
from rnnlab.serve.registry import Registry  # noqa: E402
from serve_runs import lm_run  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:prime words not in the vocabulary")]

LIMITS = Limits(max_body_bytes=4096, max_input_tokens=50, max_new_tokens=200, max_samples=4,
                max_concurrent=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 and a free port, serving a word and a char model."""
    root = tmp_path_factory.mktemp("runs")
    registry = Registry.load([lm_run(root / "word"), lm_run(root / "char", level="char")])
    port = free_port()
    config = uvicorn.Config(create_app(registry, LIMITS), host="127.0.0.1", port=port,
                            log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def check(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and words in message


def still_serving(url: str) -> None:
    response = httpx.post(f"{url}/v1/generate", json={"model": "word", "prompt": "the",
                                                      "max_tokens": 3, "seed": 1}, timeout=30)
    assert response.status_code == 200 and len(response.json()["samples"]) == 1


BAD = [
    ({"content": b'{"model": "word", "prompt": ', "headers": {"content-type":
                                                             "application/json"}}, 400, "JSON"),
    ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 422, "body"),
    ({"json": {"model": "word", "max_tokens": -5}}, 422, "max_tokens"),
    ({"json": {"model": "word", "max_tokens": 10**9}}, 422, "at most 200"),
    ({"json": {"model": "word", "temperature": -1}}, 422, "temperature"),
    ({"content": b'{"model": "word", "temperature": NaN}',
      "headers": {"content-type": "application/json"}}, 422, "temperature"),
    ({"json": {"model": "word", "top_p": 0}}, 422, "top_p"),
    ({"json": {"model": "word", "top_k": -1}}, 422, "top_k"),
    ({"json": {"model": "word", "seed": -1}}, 422, "seed"),
    ({"json": {"model": "word", "num_samples": 1000}}, 422, "at most 4"),
    ({"json": {"model": "word", "prompt": 7}}, 422, "prompt"),
    ({"json": {"model": "word", "surprise": 1}}, 422, "surprise"),
    ({"json": {"model": "nope"}}, 404, "unknown model 'nope'"),
    ({"json": {"prompt": "the"}}, 422, "several models"),
    ({"json": {"model": "char", "prompt": "XYZ"}}, 422, "not in the vocabulary"),
    ({"json": {"model": "word", "prompt": "the " * 60}}, 413, "at most 50"),
    ({"content": b"x" * 5000, "headers": {"content-type": "application/json"}}, 413,
     "over 4096 bytes"),
]


@pytest.mark.parametrize(("request_args", "status", "words"), BAD)
def test_a_bad_generate_request_gets_a_one_line_4xx(server: str, request_args: dict,
                                                    status: int, words: str) -> None:
    check(httpx.post(f"{server}/v1/generate", timeout=30, **request_args), status, words)


def test_bad_score_and_activation_requests_get_one_line_4xx(server: str) -> None:
    check(httpx.post(f"{server}/v1/score", json={"model": "word", "text": "the", "top": 99},
                     timeout=30), 422, "at most 20")
    check(httpx.post(f"{server}/v1/score", json={"model": "word", "text": "cat " * 80},
                     timeout=30), 413, "at most 50")
    check(httpx.post(f"{server}/v1/activations", json={"model": "char", "text": "ab",
                                                       "units": [999]}, timeout=30),
          422, "units must be in")
    check(httpx.post(f"{server}/v1/classify", json={"texts": ["a"]}, timeout=30), 422,
          "classifier")


def test_unknown_prompt_words_are_read_as_unk(server: str) -> None:
    response = httpx.post(f"{server}/v1/generate", json={"model": "word", "prompt": "qwerty zz",
                                                         "max_tokens": 3}, timeout=30)
    assert response.status_code == 200


@pytest.mark.slow
def test_the_server_survives_bad_requests(server: str) -> None:
    for request_args, _, _ in BAD:
        httpx.post(f"{server}/v1/generate", timeout=30, **request_args)
    still_serving(server)


def test_requests_over_the_concurrency_limit_get_429_until_a_slot_frees() -> None:
    """Requests held open by the application fill the slots; one more is turned away at once,
    and is let in when one of them has finished."""
    release = asyncio.Event()
    entered = 0

    async def held(scope, receive, send) -> None:
        nonlocal entered
        entered += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = Guard(held, Limits(max_concurrent=2))

    async def call() -> int:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/v1/generate", "headers": []}
        await guard(scope, receive, send)
        return sent[0]["status"]

    async def scenario() -> list[int]:
        first = [asyncio.create_task(call()) for _ in range(2)]
        while entered < 2:
            await asyncio.sleep(0)
        turned_away = await call()
        release.set()
        done = await asyncio.gather(*first)
        return [turned_away, *done, await call()]

    assert asyncio.run(scenario()) == [429, 200, 200, 200]


@pytest.mark.slow
def test_many_concurrent_connections_are_answered_200_or_429(server: str) -> None:
    body = {"model": "char", "prompt": "ab", "max_tokens": 20, "seed": 2}

    def one(_: int) -> int:
        return httpx.post(f"{server}/v1/generate", json=body, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(one, range(32)))
    assert set(statuses) <= {200, 429} and 200 in statuses
    still_serving(server)
    assert json.loads(httpx.get(f"{server}/healthz", timeout=30).text)["status"] == "ok"


def test_a_client_that_goes_away_mid_stream_frees_its_slot(server: str) -> None:
    body = {"model": "word", "prompt": "the", "max_tokens": 200, "stream": True, "seed": 1}
    for _ in range(LIMITS.max_concurrent + 2):  # more than the slots: each one was freed
        with httpx.stream("POST", f"{server}/v1/generate", json=body, timeout=30) as response:
            assert response.status_code == 200
            next(response.iter_lines())
    still_serving(server)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        Limits(max_concurrent=0).check()
