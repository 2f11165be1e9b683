"""The asyncio side of text generation: requests become rows of one continuously batched
decoding loop (engine/generation_runner.py) that runs on the torch executor thread.

`GenerationScheduler.submit` puts a row into a thread-safe inbox and wakes the driver task;
the driver runs the runner in turns of a few decode steps on the executor (so adapter loads
and residency queries queued on the same thread get their turn), and new rows join the
running batch between decode steps. The torch thread pushes each row's events (text deltas,
then the final result, or an error) into that row's asyncio queue with
`loop.call_soon_threadsafe`. A consumer that goes away sets the row's cancel flag; the runner
drops the row at its next step, which frees its batch slot."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import structlog

from tuneserve_server.domain.errors import CapacityExceeded
from tuneserve_server.domain.jobs import ChatTurn
from tuneserve_server.engine.generation_sampling import FinishReason, SamplingParams, TokenLogprob
from tuneserve_server.engine.registry import AdapterKey
from tuneserve_server.observability.metrics import PREDICT_REJECTED

__all__ = [
    "FinishReason",
    "GenerationResult",
    "GenerationRow",
    "GenerationScheduler",
    "Prompt",
    "SamplingParams",
    "TokenLogprob",
]

# A prompt: a text (a user turn in the chat template, or sent as-is with raw_prompt), or a
# conversation rendered through the model's chat template.
Prompt = str | tuple[ChatTurn, ...]

log = structlog.get_logger("tuneserve.engine")


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # With params.logprobs: one per completion token, in order (the EOS token is not one).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Delta:
    text: str
    # With params.logprobs: the tokens decoded since the previous delta (their text may lag:
    # a partial character or a possible stop sequence is held back).
    logprobs: tuple[TokenLogprob, ...] = ()


Event = Delta | GenerationResult | BaseException
Sink = Callable[[Event], None]


@dataclass(eq=False)
class GenerationRow:
    """One prompt to complete. `sink` is called on the torch thread and must be thread-safe;
    `cancelled` is set by the consumer and read by the runner."""

    key: AdapterKey | None  # None: the base model
    prompt: Prompt
    params: SamplingParams
    sink: Sink
    cancelled: threading.Event = field(default_factory=threading.Event)


class RowStream:
    """The consumer's end of one row: an async iterator of Delta events ending with the
    GenerationResult (errors are raised). Leaving it early cancels the row."""

    def __init__(self, row_factory: Callable[[Sink], GenerationRow]) -> None:
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.row = row_factory(lambda ev: loop.call_soon_threadsafe(self._queue.put_nowait, ev))
        self.result: GenerationResult | None = None

    def cancel(self) -> None:
        self.row.cancelled.set()

    async def events(self) -> AsyncIterator[Delta | GenerationResult]:
        try:
            while True:
                event = await self._queue.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, GenerationResult):
                    self.result = event
                    return
        finally:
            if self.result is None:
                self.cancel()

    async def wait(self) -> GenerationResult:
        async for _ in self.events():
            pass
        assert self.result is not None
        return self.result


class GenerationScheduler:
    def __init__(
        self,
        runner: Any,  # GenerationRunner; Any keeps torch out of this module's imports
        executor: Executor,
        *,
        max_wait_ms: float,
        max_queue_rows: int,
        steps_per_turn: int = 8,
    ) -> None:
        self.runner = runner
        self.executor = executor
        self.max_wait = max_wait_ms / 1000
        self.max_queue_rows = max_queue_rows
        self.steps_per_turn = steps_per_turn
        self.inbox: deque[GenerationRow] = deque()  # appended here, popped on the torch thread
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.turns = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drive(), name="generation")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for row in list(self.inbox) + list(self.runner.active_rows()):
            row.cancelled.set()

    @property
    def rows_in_flight(self) -> int:
        return len(self.inbox) + self.runner.active_count

    def open(self, key: AdapterKey | None, prompt: Prompt, params: SamplingParams) -> RowStream:
        """Queue one prompt; the returned stream yields its deltas and result."""
        return self.open_many(key, [prompt], params)[0]

    def open_many(
        self, key: AdapterKey | None, prompts: list[Prompt], params: SamplingParams
    ) -> list[RowStream]:
        if self.rows_in_flight + len(prompts) > self.max_queue_rows:
            PREDICT_REJECTED.inc()
            raise CapacityExceeded(
                f"generation queue is full ({self.rows_in_flight} rows in flight); retry with backoff"
            )
        streams = [
            RowStream(lambda sink, p=prompt: GenerationRow(key, p, params, sink)) for prompt in prompts
        ]
        self.inbox.extend(s.row for s in streams)
        self._wakeup.set()
        return streams

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.inbox and not self.runner.active_count:
                self._wakeup.clear()
                await self._wakeup.wait()
                # From idle: give concurrent callers a moment to arrive together.
                if self.max_wait:
                    await asyncio.sleep(self.max_wait)
            try:
                self.turns += 1
                await loop.run_in_executor(self.executor, self.runner.turn, self.inbox, self.steps_per_turn)
            except Exception:  # the runner failed its rows already; keep serving
                log.error("generation turn failed", exc_info=True)
