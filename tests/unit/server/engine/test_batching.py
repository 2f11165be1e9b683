"""Batcher with a plain Python run_batch on a one-thread executor: grouping, cancellation
while queued, the queue bound, and how errors reach callers."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tuneserve_server.domain.errors import CapacityExceeded
from tuneserve_server.engine.batching import Batcher, PendingRequest
from tuneserve_server.engine.registry import AdapterKey

KEY_A = AdapterKey("default", "a", 1)
KEY_B = AdapterKey("default", "b", 1)


class Recorder:
    """run_batch stand-in: records each batch (as (key, texts) pairs) and echoes the texts.
    Optionally blocks on a gate so tests can hold a batch "in flight"."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[AdapterKey | None, tuple[str, ...]]]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_whole_batch: Exception | None = None

    def __call__(self, batch: list[PendingRequest]) -> list[object]:
        self.batches.append([(r.key, tuple(r.texts)) for r in batch])
        self.entered.set()
        assert self.gate.wait(10), "test gate never opened"
        if self.fail_whole_batch is not None:
            raise self.fail_whole_batch
        out: list[object] = []
        for r in batch:
            if r.texts and r.texts[0] == "bad":
                out.append(ValueError(f"bad input for {r.key}"))
            else:
                out.append([f"{r.key.name if r.key else 'base'}:{t}" for t in r.texts])
        return out


def run_with_batcher(recorder: Recorder, body, **limits):
    settings = {"max_batch_rows": 64, "max_wait_ms": 20.0, "max_queue_rows": 1000} | limits

    async def main():
        executor = ThreadPoolExecutor(max_workers=1)
        batcher = Batcher(recorder, executor, **settings)
        batcher.start()
        try:
            return await asyncio.wait_for(body(batcher), timeout=10)
        finally:
            recorder.gate.set()
            await batcher.stop()
            executor.shutdown(wait=True)

    return asyncio.run(main())


async def _until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition never became true"
        await asyncio.sleep(0.001)


def test_concurrent_submits_share_one_batch_across_adapters():
    rec = Recorder()

    async def body(batcher: Batcher):
        return await asyncio.gather(
            batcher.submit(KEY_A, ["x"]),
            batcher.submit(KEY_B, ["y", "z"]),
            batcher.submit(None, ["w"]),
            batcher.submit(KEY_A, ["v"]),
        )

    results = run_with_batcher(rec, body)
    assert results == [["a:x"], ["b:y", "b:z"], ["base:w"], ["a:v"]]
    assert len(rec.batches) == 1
    assert rec.batches[0] == [(KEY_A, ("x",)), (KEY_B, ("y", "z")), (None, ("w",)), (KEY_A, ("v",))]


def test_batches_hold_at_most_max_batch_rows():
    rec = Recorder()

    async def body(batcher: Batcher):
        results = await asyncio.gather(*(batcher.submit(KEY_A, [f"t{i}a", f"t{i}b"]) for i in range(5)))
        return results, batcher.queued_rows, batcher.batches

    results, queued, batches = run_with_batcher(rec, body, max_batch_rows=4, max_wait_ms=5.0)
    assert results == [[f"a:t{i}a", f"a:t{i}b"] for i in range(5)]
    assert [sum(len(t) for _, t in b) for b in rec.batches] == [4, 4, 2]
    assert batches == 3 and queued == 0
    # Arrival order is kept across batches.
    assert [t for b in rec.batches for _, t in b] == [(f"t{i}a", f"t{i}b") for i in range(5)]


def test_a_request_larger_than_a_batch_still_runs_alone():
    rec = Recorder()

    async def body(batcher: Batcher):
        return await asyncio.gather(batcher.submit(KEY_A, ["1", "2", "3"]), batcher.submit(KEY_B, ["4"]))

    results = run_with_batcher(rec, body, max_batch_rows=2, max_wait_ms=1.0)
    assert results == [["a:1", "a:2", "a:3"], ["b:4"]]
    assert [len(b) for b in rec.batches] == [1, 1]


def test_a_request_cancelled_while_queued_is_never_run():
    rec = Recorder()
    rec.gate.clear()  # the first batch blocks the executor, so later requests queue up

    async def body(batcher: Batcher):
        first = asyncio.create_task(batcher.submit(KEY_A, ["first"]))
        await _until(rec.entered.is_set)
        doomed = asyncio.create_task(batcher.submit(KEY_B, ["doomed"]))
        kept = asyncio.create_task(batcher.submit(KEY_A, ["kept"]))
        await _until(lambda: batcher.queued_rows == 2)
        doomed.cancel()
        rec.gate.set()
        results = await asyncio.gather(first, doomed, kept, return_exceptions=True)
        return results, batcher.queued_rows

    (first, doomed, kept), queued = run_with_batcher(rec, body)
    assert first == ["a:first"]
    assert isinstance(doomed, asyncio.CancelledError)
    assert kept == ["a:kept"]
    assert [t for b in rec.batches for _, t in b] == [("first",), ("kept",)]
    assert queued == 0


def test_queue_over_max_queue_rows_is_refused_at_once():
    rec = Recorder()
    rec.gate.clear()

    async def body(batcher: Batcher):
        with pytest.raises(CapacityExceeded):
            await batcher.submit(KEY_A, ["1", "2", "3", "4"])  # bigger than the whole queue
        running = asyncio.create_task(batcher.submit(KEY_A, ["running"]))
        await _until(rec.entered.is_set)
        queued = asyncio.create_task(batcher.submit(KEY_A, ["q1", "q2"]))
        await _until(lambda: batcher.queued_rows == 2)
        with pytest.raises(CapacityExceeded, match="queue is full"):
            await batcher.submit(KEY_B, ["x", "y"])
        fits = asyncio.create_task(batcher.submit(KEY_B, ["fits"]))  # 2 + 1 <= 3
        await _until(lambda: batcher.queued_rows == 3)
        rec.gate.set()
        return await asyncio.gather(running, queued, fits)

    results = run_with_batcher(rec, body, max_queue_rows=3)
    assert results == [["a:running"], ["a:q1", "a:q2"], ["b:fits"]]
    assert all(("x", "y") not in [t for _, t in b] for b in rec.batches)


def test_an_exception_from_run_batch_reaches_every_caller_and_the_batcher_goes_on():
    rec = Recorder()

    async def body(batcher: Batcher):
        rec.fail_whole_batch = RuntimeError("out of memory")
        failed = await asyncio.gather(
            batcher.submit(KEY_A, ["x"]), batcher.submit(KEY_B, ["y"]), return_exceptions=True
        )
        rec.fail_whole_batch = None
        after = await batcher.submit(KEY_A, ["z"])
        return failed, after

    failed, after = run_with_batcher(rec, body)
    assert len(rec.batches[0]) == 2
    assert all(isinstance(e, RuntimeError) and "out of memory" in str(e) for e in failed)
    assert after == ["a:z"]


def test_a_per_request_exception_reaches_only_its_caller():
    rec = Recorder()

    async def body(batcher: Batcher):
        return await asyncio.gather(
            batcher.submit(KEY_A, ["good"]),
            batcher.submit(KEY_B, ["bad"]),
            batcher.submit(None, ["fine"]),
            return_exceptions=True,
        )

    good, bad, fine = run_with_batcher(rec, body)
    assert len(rec.batches) == 1
    assert good == ["a:good"]
    assert isinstance(bad, ValueError) and "default/b@1" in str(bad)
    assert fine == ["base:fine"]


def test_rows_of_a_request_cancelled_while_queued_leave_the_queue_bound_at_once():
    """Under overload with expiring deadlines, cancelled requests must not keep the queue
    "full": their rows leave the count before the batcher gets to their entries."""
    rec = Recorder()
    rec.gate.clear()  # the executor is busy: nothing queued is taken until the gate opens

    async def body(batcher: Batcher):
        running = asyncio.create_task(batcher.submit(KEY_A, ["running"]))
        await _until(rec.entered.is_set)
        doomed = asyncio.create_task(batcher.submit(KEY_B, ["d1", "d2", "d3"]))
        await _until(lambda: batcher.queued_rows == 3)
        with pytest.raises(CapacityExceeded):
            await batcher.submit(KEY_A, ["x"])
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        queued_after_cancel = batcher.queued_rows
        # A deadline passing while queued frees its rows the same way.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(KEY_B, ["t1", "t2"]), timeout=0.01)
        queued_after_timeout = batcher.queued_rows
        fits = asyncio.create_task(batcher.submit(KEY_A, ["f1", "f2", "f3"]))  # the whole bound
        await _until(lambda: batcher.queued_rows == 3)
        rec.gate.set()
        results = await asyncio.gather(running, fits)
        return results, queued_after_cancel, queued_after_timeout, batcher.queued_rows

    results, after_cancel, after_timeout, final = run_with_batcher(rec, body, max_queue_rows=3)
    assert (after_cancel, after_timeout, final) == (0, 0, 0)
    assert results == [["a:running"], ["a:f1", "a:f2", "a:f3"]]
    ran = [t for b in rec.batches for _, t in b]
    assert ran == [("running",), ("f1", "f2", "f3")]  # the dropped requests never ran


def test_many_cancelled_requests_are_skipped_and_the_count_never_goes_negative():
    rec = Recorder()
    rec.gate.clear()

    async def body(batcher: Batcher):
        running = asyncio.create_task(batcher.submit(KEY_A, ["running"]))
        await _until(rec.entered.is_set)
        doomed = [asyncio.create_task(batcher.submit(KEY_B, [f"d{i}"])) for i in range(100)]
        kept = asyncio.create_task(batcher.submit(KEY_A, ["kept"]))
        more = [asyncio.create_task(batcher.submit(KEY_B, [f"e{i}"])) for i in range(50)]
        await _until(lambda: batcher.queued_rows == 151)
        for task in doomed + more:
            task.cancel()
        await asyncio.gather(*doomed, *more, return_exceptions=True)
        queued = batcher.queued_rows
        rec.gate.set()
        results = await asyncio.gather(running, kept)
        last = await batcher.submit(KEY_B, ["last"])
        return results, last, queued, batcher.queued_rows

    (running, kept), last, queued, final = run_with_batcher(rec, body)
    assert queued == 1  # only "kept" still counts
    assert (running, kept, last) == (["a:running"], ["a:kept"], ["b:last"])
    assert [t for b in rec.batches for _, t in b] == [("running",), ("kept",), ("last",)]
    assert final == 0


def test_a_batch_starts_once_the_callers_just_answered_are_back():
    """Closed-loop callers: after a batch, the next one starts as soon as as many callers are
    queued as the last batch answered plus those waiting then, not after max_wait_ms (a
    minute here: if the batcher waited it out, the test would time out)."""
    rec = Recorder()
    rec.gate.clear()

    async def body(batcher: Batcher):
        # One 64-row call fills a batch at once (max_batch_rows); hold it in flight.
        big = asyncio.create_task(batcher.submit(KEY_A, [f"r{i}" for i in range(64)]))
        await _until(rec.entered.is_set)
        waiting = asyncio.create_task(batcher.submit(KEY_B, ["queued while busy"]))
        await _until(lambda: batcher.queued_rows == 1)
        rec.gate.set()
        await big  # answered: 1 caller answered + 1 queued = 2 expected
        await asyncio.sleep(0.05)
        alone = rec.batches[1:]  # nothing may start with only 1 of the 2 expected callers
        back = asyncio.create_task(batcher.submit(KEY_A, ["back again"]))
        return await asyncio.gather(waiting, back), alone

    (waiting, back), alone = run_with_batcher(rec, body, max_wait_ms=60_000.0)
    assert waiting == ["b:queued while busy"] and back == ["a:back again"]
    assert alone == []
    assert rec.batches[1] == [(KEY_B, ("queued while busy",)), (KEY_A, ("back again",))]


def test_answered_callers_regroup_into_one_batch_instead_of_two_half_batches():
    """Two callers answered by one batch come back one after the other: the next batch waits
    for both (up to a fraction of the last forward's time; huge here, so no timing matters)."""
    rec = Recorder()

    async def body(batcher: Batcher):
        await asyncio.gather(batcher.submit(KEY_A, ["a1"]), batcher.submit(KEY_B, ["b1"]))
        quick = asyncio.create_task(batcher.submit(KEY_A, ["a2"]))  # back at once
        await _until(lambda: batcher.queued_rows == 1)
        await asyncio.sleep(0.01)  # the slower caller; the quick one must still be queued
        held = len(rec.batches)
        slow = asyncio.create_task(batcher.submit(KEY_B, ["b2"]))
        await asyncio.gather(quick, slow)
        return rec.batches, held

    batches, held = run_with_batcher(
        rec, body, max_batch_rows=2, max_wait_ms=0.0, regroup_fraction=1_000_000.0
    )
    assert held == 1
    assert batches[1:] == [[(KEY_A, ("a2",)), (KEY_B, ("b2",))]]


def test_without_regrouping_the_quick_caller_runs_alone():
    """The control for the test above: the split it prevents does happen without it."""
    rec = Recorder()

    async def body(batcher: Batcher):
        await asyncio.gather(batcher.submit(KEY_A, ["a1"]), batcher.submit(KEY_B, ["b1"]))
        await batcher.submit(KEY_A, ["a2"])  # runs without waiting for the other caller
        await batcher.submit(KEY_B, ["b2"])
        return rec.batches

    batches = run_with_batcher(rec, body, max_batch_rows=2, max_wait_ms=0.0, regroup_fraction=0.0)
    assert batches[1:] == [[(KEY_A, ("a2",))], [(KEY_B, ("b2",))]]


# ---------------------------------------------------------------- fairness across namespaces
A_KEY = AdapterKey("tenant-a", "flood", 1)
B_KEY = AdapterKey("tenant-b", "single", 1)


def test_a_flooding_namespace_does_not_delay_another_ones_row_past_the_next_batch():
    rec = Recorder()

    async def body(batcher: Batcher):
        rec.gate.clear()
        first = asyncio.create_task(batcher.submit(A_KEY, [f"a0-{i}" for i in range(256)]))
        await _until(rec.entered.is_set)  # A's first request is in flight
        flood = [
            asyncio.create_task(batcher.submit(A_KEY, [f"a{n}-{i}" for i in range(256)])) for n in range(1, 9)
        ]
        await _until(lambda: batcher.queued_rows == 8 * 256)
        single = asyncio.create_task(batcher.submit(B_KEY, ["b"]))
        await _until(lambda: batcher.queued_rows == 8 * 256 + 1)
        rec.gate.set()
        assert await single == ["single:b"]
        await asyncio.gather(first, *flood)

    run_with_batcher(rec, body, max_batch_rows=64, max_queue_rows=10_000)
    served = next(i for i, batch in enumerate(rec.batches) if (B_KEY, ("b",)) in batch)
    assert served == 1  # the batch right after the one in flight when it arrived
    assert len(rec.batches) == 10  # each 256-row request a batch of its own, B's row alone


def test_small_requests_of_two_namespaces_alternate_when_a_batch_cannot_hold_all():
    rec = Recorder()

    async def body(batcher: Batcher):
        rec.gate.clear()
        blocker = asyncio.create_task(batcher.submit(KEY_A, ["hold"]))
        await _until(rec.entered.is_set)
        a = [asyncio.create_task(batcher.submit(A_KEY, [f"a{i}", f"a{i}'"])) for i in range(6)]
        b = [asyncio.create_task(batcher.submit(B_KEY, [f"b{i}"])) for i in range(2)]
        await _until(lambda: batcher.queued_rows == 14)
        rec.gate.set()
        await asyncio.gather(blocker, *a, *b)

    run_with_batcher(rec, body, max_batch_rows=4)
    # After the blocker, turns alternate: b (new: it goes first) b0, a0, b1, then a1 does
    # not fit; B's rows, queued after all of A's, are all in the first batch.
    firsts = [[texts[0] for _, texts in batch] for batch in rec.batches[1:]]
    assert firsts == [["a0", "b0", "b1"], ["a1", "a2"], ["a3", "a4"], ["a5"]]
    assert all(sum(len(t) for _, t in batch) <= 4 for batch in rec.batches)


def test_a_namespace_past_its_queued_rows_quota_is_refused_while_others_are_taken():
    from tuneserve_server.domain.errors import QuotaExceeded

    rec = Recorder()

    async def body(batcher: Batcher):
        rec.gate.clear()
        running = asyncio.create_task(batcher.submit(A_KEY, ["running"]))
        await _until(rec.entered.is_set)  # taken: its row no longer counts as queued
        queued = asyncio.create_task(batcher.submit(A_KEY, ["q1", "q2", "q3"]))
        await _until(lambda: batcher.namespace_rows("tenant-a") == 3)
        with pytest.raises(QuotaExceeded) as err:
            await batcher.submit(A_KEY, ["x", "y"])
        assert (err.value.quota, err.value.limit, err.value.used) == ("queued_predict_rows", 4, 3)
        assert err.value.retry_after_s > 0 and "tenant-a" in err.value.message
        other = asyncio.create_task(batcher.submit(B_KEY, ["b1", "b2", "b3", "b4"]))  # its own quota
        fits = asyncio.create_task(batcher.submit(A_KEY, ["f"]))  # 3 + 1 <= 4
        await _until(lambda: batcher.queued_rows == 8)
        rec.gate.set()
        await asyncio.gather(running, queued, other, fits)
        assert batcher.namespace_rows("tenant-a") == batcher.namespace_rows("tenant-b") == 0

    run_with_batcher(rec, body, namespace_queue_rows=4)
