"""An HTTP API and a web page over trained runs: generate, score, classify, inspect.

FastAPI on uvicorn is the Python ecosystem's default ASGI stack: request bodies are validated
from type annotations (one schema, also the OpenAPI docs at /docs), responses may stream as
server-sent events, and it is an optional extra (``pip install 'rnnlab[serve]'``) so that the
core package needs neither.

Generation steps run on the event loop itself: each language model's decoding loop
(``batching.Batcher``) is a task that alternates batched steps with the loop's network I/O.
Scoring, activations and classification run in FastAPI's thread pool.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
except ImportError as exc:  # an optional extra
    from rnnlab.errors import RnnlabError

    raise RnnlabError("serving needs FastAPI and uvicorn: pip install 'rnnlab[serve]'") from exc

from rnnlab.data.vocab import EOS
from rnnlab.errors import RnnlabError
from rnnlab.generation import SampleConfig, encode_prompt, render
from rnnlab.serve.batching import GenerationRequest
from rnnlab.serve.inspect import TooLong, activations, token_scores
from rnnlab.serve.limits import Guard, Limits
from rnnlab.serve.registry import NotFound, Registry, Served

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = Field(None, description="which run (needed when several fit)")


class GenerateBody(Body):
    prompt: str = ""
    max_tokens: int = Field(100, ge=1)
    temperature: Finite = Field(1.0, ge=0, description="0 is greedy")
    top_k: int = Field(0, ge=0, description="0: no top-k filter")
    top_p: Finite = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    num_samples: int = Field(1, ge=1)
    stop_at_eos: bool = False
    skip: list[str] = Field(default_factory=list, description="tokens never emitted")
    skip_unknown: bool = False
    stream: bool = Field(False, description="server-sent events, one per token")


class ScoreBody(Body):
    text: str = Field(..., description="scored as one stream, as `rnnlab score` reads a line")
    top: int = Field(5, ge=0, description="alternatives per token")


class ActivationsBody(Body):
    text: str
    units: list[int] = Field(..., min_length=1, max_length=64)
    layer: int = Field(-1, description="-1: the last layer")


class ClassifyBody(Body):
    texts: list[str] = Field(..., min_length=1)


def create_app(registry: Registry, limits: Limits | None = None,
               token: str | None = None) -> Any:
    """The ASGI application (FastAPI behind ``limits.Guard``)."""
    limits = (limits or Limits()).check()

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        loops = [served.batcher.start_on_loop()
                 for served in registry.served.values() if served.batcher is not None]
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            registry.close()

    app = FastAPI(title="rnnlab", summary="Recurrent language models and classifiers",
                  version=_version(), lifespan=lifespan)
    app.state.registry = registry
    _errors(app)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": registry.names()}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"models": [s.describe() for s in registry.served.values()]}

    @app.post("/v1/generate")
    async def generate(body: GenerateBody) -> Any:
        served = registry.pick(body.model, "lm", "generation")
        if body.max_tokens > limits.max_new_tokens:
            raise RnnlabError(f"max_tokens must be at most {limits.max_new_tokens}")
        if body.num_samples > limits.max_samples:
            raise RnnlabError(f"num_samples must be at most {limits.max_samples}")
        if len(body.prompt) > limits.max_body_bytes:
            raise TooLong("the prompt is too long")
        options = body.model_dump(exclude={"model", "prompt", "stream"})
        config = SampleConfig(**options).validate()
        lm = served.lm
        if served.batcher is None:  # a line model: whole lines, from its own sampler
            texts = await asyncio.to_thread(lm.generate, body.prompt, **options)
            if body.stream:
                return _sse([{"sample": i, "text": t} for i, t in enumerate(texts)]
                            + [{"done": True, "samples": texts}])
            return {"model": served.name, "samples": texts}
        prompt = encode_prompt(lm.vocab, body.prompt, config)
        banned = [lm.vocab.stoi[t] for t in config.skip if t in lm.vocab]
        eos = lm.vocab.stoi.get(EOS)
        if len(prompt) > limits.max_input_tokens:
            raise TooLong(f"the prompt has {len(prompt)} tokens; this server reads at most "
                          f"{limits.max_input_tokens} per request")
        steps = _decode(served, prompt, config, banned, eos)
        if body.stream:
            return StreamingResponse(_stream(served, steps, config, eos),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        rows: list[list[int]] = [[] for _ in range(config.num_samples)]
        async for ready in steps:
            for ids in ready:
                for row, token in zip(rows, ids.tolist(), strict=True):
                    row.append(token)
        texts = [render(lm.vocab, _until_eos(row, eos, config)) for row in rows]
        return {"model": served.name, "samples": texts, "prompt_tokens": len(prompt),
                "tokens": len(rows[0])}

    @app.post("/v1/score")
    def score(body: ScoreBody) -> dict[str, Any]:
        served = registry.pick(body.model, "lm", "scoring")
        if body.top > limits.max_top:
            raise RnnlabError(f"top must be at most {limits.max_top}")
        return {"model": served.name,
                **token_scores(served.lm, body.text, body.top, limits.max_input_tokens)}

    @app.post("/v1/activations")
    def hidden(body: ActivationsBody) -> dict[str, Any]:
        served = registry.pick(body.model, "lm", "activations")
        return {"model": served.name, **activations(
            served.lm, body.text, body.units, body.layer, limits.max_input_tokens)}

    @app.post("/v1/classify")
    def classify(body: ClassifyBody) -> dict[str, Any]:
        served = registry.pick(body.model, "classify", "classification")
        if len(body.texts) > limits.max_texts:
            raise RnnlabError(f"at most {limits.max_texts} texts per request, got "
                              f"{len(body.texts)}")
        return {"model": served.name, "labels": served.clf.label_names,
                "results": served.clf.predict(body.texts)}

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return _static("index.html")

    @app.get("/page/{name}", include_in_schema=False)
    def page_file(name: str) -> Response:
        return _static(name)

    return Guard(app, limits, token)


async def _decode(served: Served, prompt: list[int], config: SampleConfig, banned: list[int],
                  eos: int | None) -> AsyncIterator[list[Any]]:
    """The (N,) ids of each step from the model's decoding loop, as lists of the steps ready.

    Under load the loop may run ahead of this coroutine; taking every step already queued at
    once lets the response write them in one piece instead of one write per token.
    """
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    events: asyncio.Queue = asyncio.Queue()

    def emit(event: Any) -> None:
        if threading.get_ident() == loop_thread:  # the decoding loop runs on this event loop
            events.put_nowait(event)
            return
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop is gone: nobody is waiting
            request.cancelled = True

    request = GenerationRequest(prompt, config, emit, banned, eos)
    served.batcher.submit(request)
    try:
        while True:
            queued = [await events.get()]
            while not events.empty():
                queued.append(events.get_nowait())
            steps = []
            for kind, value in queued:
                if kind == "tokens":
                    steps.append(value)
                    continue
                if steps:
                    yield steps
                if kind == "error":
                    raise RuntimeError(value)
                return  # done
            yield steps
    finally:
        request.cancelled = True  # a client that went away frees its slot at the next step


async def _stream(served: Served, steps: AsyncIterator[list[Any]], config: SampleConfig,
                  eos: int | None) -> AsyncIterator[str]:
    """Server-sent events: ``{"sample", "text"}`` per token and sample, then ``{"done"}``.

    A client that goes away is noticed by the streaming response, which cancels this
    generator; ``_decode`` then frees the request's slot in the decoding loop.
    """
    vocab = served.lm.vocab
    first = [True] * config.num_samples
    finished = [False] * config.num_samples
    count = 0
    try:
        async for ready in steps:
            events = []
            for ids in ready:
                count += 1
                for i, token in enumerate(ids.tolist()):
                    if finished[i]:
                        continue
                    if config.stop_at_eos and token == eos:
                        finished[i] = True
                        continue
                    piece = render(vocab, [token])
                    if vocab.level == "word" and not first[i] and piece != "\n":
                        piece = " " + piece
                    first[i] = piece == "\n"
                    events.append(_event({"sample": i, "text": piece}))
            if events:
                yield "".join(events)
        yield _event({"done": True, "tokens": count})
    except Exception as exc:  # noqa: BLE001 - the stream has started: report in it
        yield _event({"error": f"{type(exc).__name__}: {exc}"})


def _until_eos(row: list[int], eos: int | None, config: SampleConfig) -> list[int]:
    if config.stop_at_eos and eos in row:
        return row[: row.index(eos)]
    return row


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _sse(events: list[dict[str, Any]]) -> StreamingResponse:
    async def gen() -> AsyncIterator[str]:
        for data in events:
            yield _event(data)

    return StreamingResponse(gen(), media_type="text/event-stream")


def _static(name: str) -> Response:
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    page = resources.files("rnnlab.serve") / "page" / name
    if suffix not in types or "/" in name or not page.is_file():
        raise HTTPException(404, f"no page file {name!r}")
    return Response(page.read_bytes(), media_type=f"{types[suffix]}; charset=utf-8")


def _errors(app: Any) -> None:
    """Every failure as ``{"error": one line}`` with a 4xx status (500 for a bug)."""

    def one(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return one(400, "the body is not valid JSON")
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return one(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        return one(exc.status_code, exc.detail)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return one(404, str(exc))

    @app.exception_handler(TooLong)
    async def too_long(request: Request, exc: TooLong) -> JSONResponse:
        return one(413, str(exc))

    @app.exception_handler(RnnlabError)
    async def bad(request: Request, exc: RnnlabError) -> JSONResponse:
        return one(422, str(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return one(500, f"internal error: {type(exc).__name__}: {exc}")


def _version() -> str:
    from rnnlab import __version__

    return __version__

