"""The prediction log against a real SQLite store: ids are issued without I/O and written
by flush(); inputs reach the store only for adapters whose store_inputs is on; the pending
queue is bounded (the oldest dropped and counted); the background task writes on its own."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tuneserve_server.config import Settings
from tuneserve_server.domain.errors import NotFound
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.observability.metrics import REGISTRY
from tuneserve_server.services.feedback import FeedbackService
from tuneserve_server.services.prediction_log import PredictionLog, PredictionLogSettings
from tuneserve_server.services.quotas import quotas_of
from tuneserve_server.storage.sqlite_store import SqliteStore


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "jobs.db")
    yield s
    s.close()


def _dropped() -> float:
    return REGISTRY.get_sample_value("tuneserve_prediction_log_dropped_total") or 0.0


def test_ids_are_written_on_flush_and_inputs_only_where_stored(store):
    store.set_feedback_settings("teama", "keeps", True)
    plog = PredictionLog(store)
    rows = [("card_arrival", 0.9, "where is my card", None), ("lost", 0.6, "stolen", None)]
    kept = plog.issue("teama", "keeps", 2, TaskType.CLASSIFICATION, rows)
    plain = plog.issue("teama", "plain", 1, TaskType.CAUSAL_LM, [("", 0.0, "hi", "hello there")])
    assert len(set(kept + plain)) == 3 and all(i.startswith("pr-") and len(i) == 27 for i in kept + plain)
    with pytest.raises(NotFound):  # nothing written before the flush
        store.get_prediction("teama", kept[0])
    assert asyncio.run(plog.flush()) == 3
    first = store.get_prediction("teama", kept[0])
    assert (first.adapter_version, first.label, first.score, first.input_text) == (
        2,
        "card_arrival",
        0.9,
        "where is my card",
    )
    gen = store.get_prediction("teama", plain[0])
    assert gen.task is TaskType.CAUSAL_LM and gen.input_text is None and gen.output_text is None


def test_off_issues_no_ids(store):
    plog = PredictionLog(store, PredictionLogSettings(enabled=False))
    assert plog.issue("teama", "a", 1, TaskType.CLASSIFICATION, [("x", 0.5, "t", None)] * 3) == ["", "", ""]
    assert asyncio.run(plog.flush()) == 0


def test_pending_rows_are_bounded(store):
    plog = PredictionLog(store, PredictionLogSettings(max_pending=4))
    before = _dropped()
    ids = plog.issue("teama", "a", 1, TaskType.CLASSIFICATION, [("x", 0.5, "t", None)] * 6)
    assert _dropped() - before == 2
    assert asyncio.run(plog.flush()) == 4
    with pytest.raises(NotFound):
        store.get_prediction("teama", ids[0])  # the oldest went
    assert store.get_prediction("teama", ids[-1]).label == "x"


def test_background_task_writes_and_stop_flushes(store):
    async def scenario() -> tuple[str, str]:
        plog = PredictionLog(store, PredictionLogSettings(flush_s=0.05))
        plog.start()
        [early] = plog.issue("teama", "a", 1, TaskType.CLASSIFICATION, [("x", 0.5, "t", None)])
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                store.get_prediction("teama", early)
                break
            except NotFound:
                continue
        [late] = plog.issue("teama", "a", 1, TaskType.CLASSIFICATION, [("y", 0.5, "t", None)])
        await plog.stop()
        return early, late

    early, late = asyncio.run(scenario())
    assert store.get_prediction("teama", early).label == "x"
    assert store.get_prediction("teama", late).label == "y"


def test_inputs_of_an_adapter_known_not_to_keep_them_are_not_queued(store):
    plog = PredictionLog(store)
    plog.issue("teama", "plain", 1, TaskType.CLASSIFICATION, [("x", 0.5, "first text", None)])
    assert plog._pending[-1].input_text == "first text"  # not known yet: decided at the flush
    asyncio.run(plog.flush())  # learns store_inputs=False for teama/plain
    plog.issue("teama", "plain", 1, TaskType.CLASSIFICATION, [("x", 0.5, "second text", None)])
    assert plog._pending[-1].input_text is None
    store.set_feedback_settings("teama", "plain", True)
    plog.forget_setting("teama", "plain")  # what SetFeedbackSettings does on this replica
    [pid] = plog.issue("teama", "plain", 1, TaskType.CLASSIFICATION, [("x", 0.5, "third text", None)])
    asyncio.run(plog.flush())
    assert store.get_prediction("teama", pid).input_text == "third text"


class _GatedStore(SqliteStore):
    """A real SQLite store whose prediction writes wait for `gate`, and which says when a
    lookup missed: to hold the background flush mid-write while feedback looks an id up."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.writing, self.gate, self.missed = threading.Event(), threading.Event(), threading.Event()

    def insert_predictions(self, rows):
        self.writing.set()
        self.gate.wait(10)
        return super().insert_predictions(rows)

    def get_prediction(self, namespace, prediction_id):
        try:
            return super().get_prediction(namespace, prediction_id)
        except NotFound:
            self.missed.set()
            raise


def test_feedback_finds_an_id_whose_batch_the_background_flush_is_writing(tmp_path):
    # The race `make demo-iterate` hit: SubmitFeedback right after Predict, while the
    # background task was writing that row's batch; the lookup missed, feedback's own flush
    # found nothing pending, and the id was answered NOT_FOUND although it was being stored.
    store = _GatedStore(tmp_path / "jobs.db")
    plog = PredictionLog(store)
    # The engine is not used to look predictions up.
    service = FeedbackService(
        store,
        None,
        plog,
        max_text_chars=1000,
        max_feedback_per_tenant=10,
        max_dataset_bytes=1 << 20,
        quotas=quotas_of(Settings()),
    )

    async def scenario():
        [pid] = plog.issue("teama", "a", 1, TaskType.CLASSIFICATION, [("card_arrival", 0.5, "t", None)])
        background = asyncio.create_task(plog.flush())
        await asyncio.to_thread(store.writing.wait, 10)  # the batch is out of the queue, not stored
        lookup = asyncio.create_task(service._prediction("teama", pid))
        await asyncio.to_thread(store.missed.wait, 10)
        store.gate.set()
        await background
        return await lookup

    try:
        assert asyncio.run(scenario()).label == "card_arrival"
    finally:
        store.close()
