"""Continuous batching: concurrent generation requests share one decoding loop.

Every step, the loop stacks the recurrent states of the active requests along the batch
dimension, runs one batched step of the network, splits the logits back and samples each
request's rows with its own options and its own ``torch.Generator``. Requests join (after
reading their prompt alone, as ``generate_ids`` does) and leave between steps, so a long
request never holds a short one back (the scheduling of Yu et al., 2022, "Orca", here for
recurrent states, whose size does not grow with the text).

A request's tokens equal those of ``rnnlab.generation.generate_ids`` with the same seed: the
same prompt read, the same step function, the same draws (``sample_next``, or ``sample_rows``
for many requests at once) from a generator that only this request uses. Only the rows of the
other requests differ, and a row of a batched matrix product, a softmax or a running sum does
not depend on the other rows.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnlab import fast
from rnnlab.generation import SampleConfig, expand_state, sample_next, sample_rows
from rnnlab.models.cells import State
from rnnlab.models.language_model import RNNLanguageModel

# What a request receives: ("tokens", (N,) ids) per step, then ("done", None) or ("error", str).
Event = tuple[str, Any]


@dataclass
class GenerationRequest:
    """One request: its prompt ids, its sampling options and where its tokens go."""

    prompt: list[int]
    config: SampleConfig
    emit: Callable[[Event], None]
    banned: list[int] = field(default_factory=list)
    eos_id: int | None = None
    cancelled: bool = False  # set by the owner (e.g. a client that went away)
    # Filled by the loop:
    generator: torch.Generator | None = None
    banned_ids: torch.Tensor | None = None  # (K,) ``banned`` as a tensor, made once
    logits: torch.Tensor | None = None  # (N, V) for the next draw
    state: State | None = None  # (layers, N, H) after the last token
    done: torch.Tensor | None = None  # (N,) samples that produced eos
    steps: int = 0


def _unfiltered(request: GenerationRequest) -> bool:
    """Whether the request samples from the whole softmax at a temperature (no filters)."""
    config = request.config
    return (config.temperature > 0 and not config.top_k and config.top_p >= 1
            and not request.banned_ids.numel())


def _cat_states(states: list[State]) -> State:
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))  # type: ignore[return-value]
    return torch.cat(states, dim=1)  # type: ignore[arg-type]


def _split_state(state: State, sizes: list[int]) -> list[State]:
    if isinstance(state, tuple):
        return list(zip(*(s.split(sizes, dim=1) for s in state), strict=True))  # type: ignore[arg-type]
    return list(state.split(sizes, dim=1))


class Batcher:
    """One decoding loop for one language model.

    ``submit(request)`` queues a request; its ``emit`` is called from the loop with each
    step's (N,) ids and finally ``("done", None)``, or ``("error", message)``. The loop runs
    either as a task of an event loop (``start_on_loop``, what the server does) or, when none
    runs it, on a thread of its own that the first ``submit`` starts.
    """

    def __init__(self, model: RNNLanguageModel, max_batch: int = 64):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.max_batch = max_batch  # sample rows decoded together; more wait for a free slot
        self.inbox: queue.Queue[GenerationRequest | None] = queue.Queue()
        self.active: list[GenerationRequest] = []
        self.stepper = None
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.wake: Callable[[], None] | None = None  # set while an event loop runs the loop

    # --- the owner's side ----------------------------------------------------------------------

    def start(self) -> Batcher:
        with self.lock:
            if self.thread is None and self.wake is None:
                self.thread = threading.Thread(target=self._loop, name="rnnlab-batcher",
                                               daemon=True)
                self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.inbox.put(None)
            self.thread.join(timeout=30)
            self.thread = None

    def submit(self, request: GenerationRequest) -> None:
        self.start()
        self.inbox.put(request)
        if self.wake is not None:
            self.wake()

    def generate(self, prompt: list[int], config: SampleConfig, banned: list[int] = (),
                 eos_id: int | None = None) -> list[torch.Tensor]:
        """Blocking: the (N,) ids of every step, as ``list(generate_ids(...))`` gives them."""
        events: queue.Queue[Event] = queue.Queue()
        self.submit(GenerationRequest(prompt, config, events.put, list(banned), eos_id))
        steps = []
        while True:
            kind, value = events.get()
            if kind == "tokens":
                steps.append(value)
            elif kind == "error":
                raise RuntimeError(value)
            else:
                return steps

    def start_on_loop(self) -> asyncio.Task:
        """Run the decoding loop as a task of the running event loop (call it from that loop);
        cancel the task to stop it.

        Each step then runs on the loop's own thread, between its rounds of network I/O. On a
        thread of its own the loop would hand the GIL back and forth with the HTTP handling at
        every tensor operation, and under load that waiting, not the arithmetic, sets the pace.
        """
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        with self.lock:
            if self.thread is not None:
                raise RuntimeError("this decoding loop already runs on a thread")
            self.wake = lambda: loop.call_soon_threadsafe(arrived.set)  # from here on, no thread
        return loop.create_task(self._run_on_loop(arrived))

    async def _run_on_loop(self, arrived: asyncio.Event) -> None:
        try:
            with torch.inference_mode():
                self._prepare()
            while True:
                if not self.active and self.inbox.empty():
                    arrived.clear()
                    await arrived.wait()
                with torch.inference_mode():
                    if not self._admit(block=False):
                        return
                    if self.active:
                        self._step()
                await asyncio.sleep(0)  # the loop writes this step's tokens and reads requests
        finally:
            self.wake = None

    # --- the loop ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        # The same step function as generate_ids: weights laid out for one-token steps when the
        # fast paths are on (they read float weight matrices, absent from an int8 model).
        if fast.enabled() and hasattr(self.model.rnn, "weight_ih_l0"):
            self.stepper = fast.TokenStepper(self.model)

    def _loop(self) -> None:
        with torch.inference_mode():
            self._prepare()
            while True:
                if not self._admit(block=True):
                    return
                if self.active:
                    self._step()

    def _rows(self) -> int:
        return sum(r.config.num_samples for r in self.active)

    def _admit(self, block: bool) -> bool:
        """Move waiting requests into the batch (with ``block``, waiting while none is active).

        False when told to stop."""
        while True:
            try:
                request = self.inbox.get(block=block and not self.active)
            except queue.Empty:
                return True
            if request is None:
                return False
            if self._rows() and self._rows() + request.config.num_samples > self.max_batch:
                self.inbox.put(request)  # full: it joins when a slot frees (FIFO is kept loose)
                return True
            try:
                self._start(request)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the loop
                request.emit(("error", f"{type(exc).__name__}: {exc}"))
                continue
            self.active.append(request)

    def _start(self, request: GenerationRequest) -> None:
        """Read the prompt alone, batch 1, exactly as ``generate_ids`` does."""
        config = request.config
        generator = torch.Generator(device=self.device)
        if config.seed is None:
            generator.seed()
        else:
            generator.manual_seed(config.seed)
        tokens = torch.tensor([request.prompt], device=self.device)  # (1, P)
        logits, state = self.model(tokens, None)
        request.generator = generator
        request.banned_ids = torch.tensor(sorted(set(request.banned)), dtype=torch.long,
                                          device=self.device)
        request.logits = logits[:, -1].expand(config.num_samples, -1)  # (N, V)
        request.state = expand_state(state, config.num_samples)
        request.done = torch.zeros(config.num_samples, dtype=torch.bool, device=self.device)

    def _step(self) -> None:
        """Sample every active request once, drop the finished, advance the rest together."""
        staying, ids = [], []
        for request, next_ids in self._sample([r for r in self.active if not r.cancelled]):
            if isinstance(next_ids, Exception):  # this request fails, the others go on
                request.emit(("error", f"{type(next_ids).__name__}: {next_ids}"))
                continue
            request.emit(("tokens", next_ids))
            config = request.config
            finished = request.steps >= config.max_tokens or (
                config.stop_at_eos and request.eos_id is not None and bool(request.done.all()))
            if finished:
                request.emit(("done", None))
            else:
                staying.append(request)
                ids.append(next_ids)
        self.active = staying
        if not staying:
            return
        sizes = [r.config.num_samples for r in staying]
        state = _cat_states([r.state for r in staying])
        try:
            logits, state = self._advance(torch.cat(ids), state)
        except Exception as exc:  # noqa: BLE001 - fail this batch, keep serving
            for request in staying:
                request.emit(("error", f"{type(exc).__name__}: {exc}"))
            self.active = []
            return
        for request, part, part_state in zip(staying, logits.split(sizes),
                                             _split_state(state, sizes), strict=True):
            request.logits, request.state = part, part_state

    def _sample(self, requests: list[GenerationRequest]
                ) -> list[tuple[GenerationRequest, torch.Tensor | Exception]]:
        """Each request's (N,) next ids (or the error that stopped it), in order.

        Requests that sample at a temperature with no filters are drawn together in one pass
        (``sample_rows``); the rest one by one with ``sample_next``. Both give a request the ids
        it would get alone.
        """
        drawn: dict[int, torch.Tensor | Exception] = {}
        plain = [r for r in requests if _unfiltered(r)]
        if plain:
            counts = [r.config.num_samples for r in plain]
            try:
                rows = sample_rows(torch.cat([r.logits for r in plain]),
                                   [r.config.temperature for r in plain], counts,
                                   [r.generator for r in plain])
                drawn.update(zip(map(id, plain), rows.split(counts), strict=True))
            except Exception as exc:  # noqa: BLE001 - reported to each of these requests
                drawn.update((id(r), exc) for r in plain)
        for request in requests:
            if id(request) in drawn:
                continue
            config = request.config
            try:
                drawn[id(request)] = sample_next(
                    request.logits, temperature=config.temperature, top_k=config.top_k,
                    top_p=config.top_p, banned=request.banned_ids, generator=request.generator)
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                drawn[id(request)] = exc
        result = []
        for request in requests:
            next_ids = drawn[id(request)]
            config = request.config
            if not isinstance(next_ids, Exception):
                if config.stop_at_eos and request.eos_id is not None:
                    next_ids = next_ids.masked_fill(request.done, request.eos_id)
                    request.done |= next_ids == request.eos_id
                request.steps += 1
            result.append((request, next_ids))
        return result

    def _advance(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """(B,) ids and the stacked state -> (B, V) logits and the new state: one step."""
        if self.stepper is not None:
            return self.stepper.step(ids, state)
        logits, state = self.model(ids[:, None], state)  # (B, 1) -> (B, 1, V)
        return logits[:, 0], state
