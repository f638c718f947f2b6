"""Continuous batching: concurrent requests decoded together get what each gets alone."""

from __future__ import annotations

import asyncio
import queue
import threading

import pytest
import torch

from rnnlab import fast
from rnnlab.api import LanguageModel
from rnnlab.generation import SampleConfig, generate_ids
from rnnlab.serve.batching import Batcher, GenerationRequest
from serve_runs import lm_run

pytestmark = pytest.mark.usefixtures("one_thread")


def configs() -> list[tuple[list[int], SampleConfig]]:
    """Eight requests of different prompts, lengths, filters, seeds and sample counts: some
    drawn together (a temperature, no filter), some one by one (filters, greedy)."""
    cases = []
    for i in range(8):
        config = SampleConfig(max_tokens=6 + 5 * i, temperature=[1.0, 0.7, 0.0, 1.3][i % 4],
                              top_k=[0, 4, 0, 0][i % 4], top_p=[1.0, 1.0, 0.8, 1.0][i % 4],
                              seed=i, num_samples=1 + i % 3)
        cases.append(([2 + i, 3, 4 + i][: 1 + i % 3], config))
    return cases


@pytest.mark.parametrize(("cell", "fast_on"), [
    ("lstm", True), pytest.param("lstm", False, marks=pytest.mark.slow),
    pytest.param("gru", True, marks=pytest.mark.slow)])
def test_concurrent_requests_equal_each_request_decoded_alone(tmp_path, cell: str,
                                                              fast_on: bool) -> None:
    lm = LanguageModel.load(lm_run(tmp_path / "run", cell=cell))
    with fast.enabled_as(fast_on):
        alone = [torch.stack(list(generate_ids(lm.model, p, c)), 1).tolist()
                 for p, c in configs()]
        batcher = Batcher(lm.model)
        together: list = [None] * len(alone)

        def run(i: int, prompt: list[int], config: SampleConfig) -> None:
            together[i] = torch.stack(batcher.generate(prompt, config), 1).tolist()

        threads = [threading.Thread(target=run, args=(i, *case))
                   for i, case in enumerate(configs())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        batcher.stop()
    assert together == alone


def test_requests_decoded_as_a_task_of_an_event_loop_equal_each_decoded_alone(tmp_path) -> None:
    """The server's way: the loop runs on the event loop's own thread, no thread of its own."""
    lm = LanguageModel.load(lm_run(tmp_path / "run"))
    alone = [torch.stack(list(generate_ids(lm.model, p, c)), 1).tolist() for p, c in configs()]
    batcher = Batcher(lm.model)

    async def decode_all() -> list:
        loop = batcher.start_on_loop()
        steps: list[list] = [[] for _ in alone]
        ended = [asyncio.Event() for _ in alone]

        def sink(i: int):
            def emit(event: tuple) -> None:
                steps[i].append(event[1]) if event[0] == "tokens" else ended[i].set()
            return emit

        for i, (prompt, config) in enumerate(configs()):
            batcher.submit(GenerationRequest(prompt, config, sink(i)))
            await asyncio.sleep(0)  # later requests join a loop already decoding
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ended)), timeout=60)
        loop.cancel()
        return [torch.stack(s, 1).tolist() for s in steps]

    assert asyncio.run(decode_all()) == alone
    assert batcher.thread is None


def test_requests_join_and_leave_between_steps(tmp_path) -> None:
    """A request submitted while another decodes joins the running loop; the first, shorter,
    leaves; both still get their solo tokens."""
    lm = LanguageModel.load(lm_run(tmp_path / "run"))
    long_config, short_config = SampleConfig(max_tokens=30, seed=1), SampleConfig(max_tokens=5,
                                                                                 seed=2)
    batcher = Batcher(lm.model)
    events: queue.Queue = queue.Queue()
    second: queue.Queue = queue.Queue()
    batcher.submit(GenerationRequest([2, 3], long_config, events.put))
    assert events.get(timeout=30)[0] == "tokens"  # the first request is decoding
    batcher.submit(GenerationRequest([4], short_config, second.put))
    steps, short = [], []
    for sink, out in ((second, short), (events, steps)):
        while (event := sink.get(timeout=30))[0] == "tokens":
            out.append(event[1])
    batcher.stop()
    assert len(short) == 5 and len(steps) == 29  # the first step was taken above
    alone_short = torch.stack(list(generate_ids(lm.model, [4], short_config)), 1)
    assert torch.stack(short, 1).tolist() == alone_short.tolist()


def test_a_cancelled_request_leaves_and_the_others_go_on(tmp_path) -> None:
    lm = LanguageModel.load(lm_run(tmp_path / "run"))
    batcher = Batcher(lm.model)
    events: queue.Queue = queue.Queue()
    gone = GenerationRequest([2], SampleConfig(max_tokens=1000, seed=1), events.put)
    batcher.submit(gone)
    events.get(timeout=30)
    gone.cancelled = True
    config = SampleConfig(max_tokens=8, seed=4)
    steps = batcher.generate([3], config)
    batcher.stop()
    assert torch.stack(steps, 1).tolist() == torch.stack(
        list(generate_ids(lm.model, [3], config)), 1).tolist()
    assert batcher.active == []
