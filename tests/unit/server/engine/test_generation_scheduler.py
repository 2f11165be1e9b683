"""The asyncio side of generation (engine/generation.py) driving the real decoding loop on a
tiny random Llama in a one-thread executor: concurrent streams are batched and each gets its
own result, deltas add up to the result, a consumer that stops reading cancels its row, and
the queue bound refuses new rows with CapacityExceeded."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from generation_fixtures import Harness, byte_tokenizer, key, result_of, tiny_llama

from tuneserve_server.domain.errors import CapacityExceeded
from tuneserve_server.engine.generation import Delta, GenerationResult, GenerationScheduler, SamplingParams

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok))


def alone(tok, model, prompt, slot, **params):
    h = Harness(tok, model)
    events, _ = h.add(prompt, slot, **params)
    h.run()
    return result_of(events)


async def with_scheduler(tok, model, body, max_queue_rows: int = 64):
    executor = ThreadPoolExecutor(1)
    runner = Harness(tok, model).runner
    scheduler = GenerationScheduler(
        runner, executor, max_wait_ms=5, max_queue_rows=max_queue_rows, steps_per_turn=2
    )
    scheduler.start()
    try:
        return await body(scheduler, runner)
    finally:
        await scheduler.stop()
        executor.shutdown(wait=True)


def test_concurrent_streams_share_the_loop_and_each_gets_its_own_result(tok, model) -> None:
    jobs = [("hello", "s0", {}), ("weather?", None, {"temperature": 1.0, "seed": 4}), ("x", "s1", {})]
    want = [alone(tok, model, p, s, max_new_tokens=10, **kw) for p, s, kw in jobs]

    async def body(scheduler, runner):
        streams = [scheduler.open(key(s), p, SamplingParams(max_new_tokens=10, **kw)) for p, s, kw in jobs]

        async def collect(stream):
            deltas, final = [], None
            async for ev in stream.events():
                if isinstance(ev, Delta):
                    deltas.append(ev.text)
                else:
                    final = ev
            return "".join(deltas), final

        return await asyncio.gather(*(collect(s) for s in streams)), runner.steps

    results, steps = asyncio.run(with_scheduler(tok, model, body))
    assert [final for _, final in results] == want
    assert all(text == final.text for text, final in results)
    assert steps < 3 * 10  # the three rows were decoded together, not one after another


def test_a_consumer_that_stops_reading_cancels_its_row(tok, model) -> None:
    async def body(scheduler, runner):
        stream = scheduler.open(None, "tell me more", SamplingParams(max_new_tokens=200))
        other = scheduler.open(key("s0"), "hello", SamplingParams(max_new_tokens=40))
        events = stream.events()
        await events.__anext__()
        await events.aclose()  # as when a gRPC client disconnects
        assert stream.row.cancelled.is_set()
        final = await other.wait()
        for _ in range(100):
            if runner.active_count == 0:
                break
            await asyncio.sleep(0.02)
        return final, runner.active_count, stream.result

    final, active, dropped = asyncio.run(with_scheduler(tok, model, body))
    assert isinstance(final, GenerationResult) and final.completion_tokens > 0
    assert active == 0 and dropped is None


def test_a_full_queue_refuses_new_rows(tok, model) -> None:
    async def body(scheduler, runner):
        streams = scheduler.open_many(None, ["a", "b"], SamplingParams(max_new_tokens=5))
        with pytest.raises(CapacityExceeded):
            scheduler.open(None, "c", SamplingParams(max_new_tokens=5))
        return [await s.wait() for s in streams]

    results = asyncio.run(with_scheduler(tok, model, body, max_queue_rows=2))
    assert [r.completion_tokens for r in results] == [5, 5]
