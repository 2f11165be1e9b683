"""A trainer worker outlives job-store errors instead of exiting."""

from __future__ import annotations

import threading
import time

from tuneserve_server.config import load_settings
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.storage.sqlite_store import SqliteStore
from tuneserve_server.training.worker import TrainerWorker


def test_worker_keeps_running_when_the_store_fails(tmp_path):
    settings = load_settings({"data_dir": tmp_path, "worker_poll_s": 0.05}, env={})
    store = SqliteStore(tmp_path / "jobs.db")
    store.close()  # every call now raises, as an unreachable database would
    worker = TrainerWorker(settings, store, LocalAdapterStore(tmp_path / "adapters"))
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    time.sleep(1.5)
    assert thread.is_alive()
    worker.stopping.set()
    thread.join(5)
    assert not thread.is_alive()
