"""A new version is served on the next Predict with no restart and no failed request; jobs and
adapters outlive an API restart; the worker keeps training while the API is down."""

from __future__ import annotations

import signal
import threading
import time

from conftest import banking77

SWAP_LABELS = ("card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "change_pin")


def test_hot_swap_under_load_fails_no_request(cluster, trained):
    stop = threading.Event()
    seen: list[int] = []  # one entry per successful call
    errors: list[BaseException] = []

    def hammer() -> None:
        with cluster.client(timeout=30) as client:
            while not stop.is_set():
                try:
                    for p in client.predict("intents", ["my card is lost", "what is the exchange rate"]):
                        assert p.label
                    seen.append(1)
                except BaseException as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        with cluster.client(timeout=60) as client:
            job = client.train("intents", banking77("train", labels=SWAP_LABELS, per_label=20), epochs=2)
            job = client.wait(job, timeout=600, poll_interval=0.3)
            assert job.state == "SUCCEEDED", job.error
            assert job.adapter_version == trained.adapter_version + 1
            # The very next Predict after the job is seen to succeed uses the new version,
            # which knows a label v1 never had.
            [p] = client.predict("intents", ["I need to change my PIN"], probabilities=True)
            assert "change_pin" in {s.label for s in p.probabilities}
            time.sleep(1.0)  # keep the load on across the swap
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert len(seen) > 10  # the load really ran
    with cluster.client() as client:
        # The old version stays addressable by number.
        [old] = client.predict(f"intents@{trained.adapter_version}", ["change my pin"], probabilities=True)
        assert "change_pin" not in {s.label for s in old.probabilities}


def test_jobs_and_adapters_survive_api_restart_and_worker_survives_api_crash(cluster, trained):
    with cluster.client() as client:
        job = client.train("survivor", banking77("train", per_label=15), epochs=2)
        deadline = time.monotonic() + 120
        while client.get_job(job.id).state == "QUEUED" and time.monotonic() < deadline:
            time.sleep(0.2)
    # The API dies hard in the middle of training; the worker process is not touched.
    cluster.restart_api(sig=signal.SIGKILL)
    with cluster.client(timeout=60) as client:
        assert client.get_job(trained.id).state == "SUCCEEDED"
        finished = client.wait(job.id, timeout=600, poll_interval=0.3)
        assert finished.state == "SUCCEEDED", finished.error
        assert finished.attempts == 1  # trained once, never restarted
        names = {a.name for a in client.list_adapters()}
        assert {"intents", "survivor"} <= names
        [p] = client.predict("survivor", ["my card got stolen"])
        assert p.label in {"lost_or_stolen_card", "card_arrival", "exchange_rate", "top_up_failed"}
    assert cluster.worker.proc.poll() is None  # the worker never went down
    # A graceful restart too.
    cluster.restart_api()
    with cluster.client() as client:
        assert client.get_adapter("intents").latest_version >= trained.adapter_version
        assert client.predict(f"intents@{trained.adapter_version}", ["lost card"])[0].label
