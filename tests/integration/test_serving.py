"""The serving engine through a real server: mixed-adapter batches give each adapter's own
answers, warm-up and pinning, back-pressure, deadlines, the bfloat16 mode."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import Proc, auth_channel, banking77, free_port, wait_serving

from tuneserve.v1 import inference_pb2, inference_pb2_grpc
from tuneserve_client import Client, NotFound, TuneserveError

QUERIES = [t for t, _ in banking77("test", per_label=6)]


@pytest.fixture(scope="module")
def two_versions(cluster, trained):
    """`intents` with at least two versions (the hot-swap test makes v2; make it if run alone)."""
    with cluster.client(timeout=60) as client:
        adapter = client.get_adapter("intents")
        if len(adapter.versions) < 2:
            job = client.train("intents", banking77("train", per_label=15), epochs=1)
            assert client.wait(job, timeout=600).state == "SUCCEEDED"
            adapter = client.get_adapter("intents")
    return [v.version for v in adapter.versions[-2:]]


def test_concurrent_mixed_adapter_requests_match_each_adapter_alone(cluster, two_versions):
    refs = [f"intents@{v}" for v in two_versions] + ["survivor"]
    with cluster.client() as client:
        names = {a.name for a in client.list_adapters()}
        refs = [r for r in refs if r.split("@")[0] in names]
        alone = {r: client.predict(r, QUERIES, probabilities=True) for r in refs}

    def one(args):
        ref, i = args
        with cluster.client(timeout=60) as c:
            return ref, i, c.predict(ref, [QUERIES[i]], probabilities=True)[0]

    jobs = [(ref, i) for i in range(len(QUERIES)) for ref in refs]
    with ThreadPoolExecutor(8) as pool:
        mixed = list(pool.map(one, jobs))
    for ref, i, got in mixed:
        want = alone[ref][i]
        assert got.label == want.label
        assert {s.label: round(s.score, 4) for s in got.probabilities} == pytest.approx(
            {s.label: round(s.score, 4) for s in want.probabilities}, abs=2e-4
        )
    batches = cluster.api.metrics()
    assert batches["tuneserve_batch_adapters_count"] >= 1


def test_load_pin_unload(cluster, two_versions):
    old, new = two_versions
    with cluster.client() as client:
        loaded = client.load_adapter(f"intents@{old}", pin=True)
        assert (loaded.version, loaded.pinned) == (old, True) and loaded.size_bytes > 0
        again = client.load_adapter(f"intents@{old}")
        assert again.load_seconds == 0.0  # already resident: no second load
        v = {x.version: x for x in client.get_adapter("intents").versions}
        assert v[old].resident and v[old].pinned and v[old].last_used is not None
        assert client.unload_adapter(f"intents@{old}") == [old]
        v = {x.version: x for x in client.get_adapter("intents").versions}
        assert not v[old].resident and not v[old].pinned
        # Still registered: it loads again on demand.
        assert client.predict(f"intents@{old}", ["lost card"])[0].label
        with pytest.raises(NotFound):
            client.load_adapter("no-such-adapter")
        with pytest.raises(NotFound):
            client.load_adapter(f"intents@{new + 100}")


def test_pinned_name_follows_new_versions(cluster, trained):
    with cluster.client(timeout=60) as client:
        job = client.train("pinned", banking77("train", per_label=10), epochs=1)
        assert client.wait(job, timeout=600).state == "SUCCEEDED"
        first = client.load_adapter("pinned", pin=True)
        job = client.train("pinned", banking77("train", per_label=10), epochs=1, seed=7)
        assert client.wait(job, timeout=600).state == "SUCCEEDED"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            v = {x.version: x for x in client.get_adapter("pinned").versions}
            if v[first.version + 1].pinned and not v[first.version].resident:
                break
            time.sleep(0.2)
        assert v[first.version + 1].resident and v[first.version + 1].pinned
        assert not v[first.version].pinned and not v[first.version].resident
        client.unload_adapter("pinned")


def test_overload_gets_resource_exhausted_and_deadlines_drop_queued_requests(cluster, trained, tmp_path):
    api = Proc("api", cluster.data_dir, tmp_path, port=free_port(), max_queue_rows=64, max_batch_rows=32)
    try:
        wait_serving(api.target)
        outcomes: list[str] = []
        lock = threading.Lock()

        def call(i: int) -> None:
            with auth_channel(api) as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                try:
                    stub.Predict(
                        inference_pb2.PredictRequest(adapter="intents", inputs=QUERIES[:16]), timeout=60
                    )
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
            with lock:
                outcomes.append(code)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        assert "RESOURCE_EXHAUSTED" in outcomes and "OK" in outcomes
        metrics = api.metrics()
        assert metrics["tuneserve_predict_rejected_total"] == outcomes.count("RESOURCE_EXHAUSTED")

        # Deadlines: keep the torch thread busy, queue calls with short deadlines behind it.
        before = api.metrics()
        with Client(api.target, timeout=60, api_key=api.api_key) as client, ThreadPoolExecutor(4) as pool:
            busy = [pool.submit(client.predict, "intents", QUERIES[:32]) for _ in range(2)]
            time.sleep(0.05)
            short = []
            for _ in range(4):
                try:
                    client.predict("intents", QUERIES[:4], timeout=0.02)
                    short.append("OK")
                except Exception as exc:
                    short.append(type(exc).__name__)
            for f in busy:
                f.result()
        assert "DeadlineExceeded" in short
        time.sleep(0.5)
        after = api.metrics()
        dropped = after["tuneserve_predict_dropped_total"] - before["tuneserve_predict_dropped_total"]
        ran = after["tuneserve_batch_rows_sum"] - before["tuneserve_batch_rows_sum"]
        assert dropped >= 1
        # Dropped requests never reached the model: only the busy rows and the short calls
        # that were batched before their deadline ran.
        assert ran == 2 * len(QUERIES[:32]) + 4 * (len(short) - dropped)
    finally:
        api.stop()


def test_bfloat16_mode_agrees_with_float32(cluster, trained, tmp_path):
    api = Proc("api", cluster.data_dir, tmp_path, port=free_port(), serving_dtype="bfloat16")
    try:
        wait_serving(api.target)
        ref = f"intents@{trained.adapter_version}"
        with cluster.client() as fp32, Client(api.target, timeout=60, api_key=api.api_key) as bf16:
            a = fp32.predict(ref, QUERIES)
            b = bf16.predict(ref, QUERIES)
        agree = sum(x.label == y.label for x, y in zip(a, b)) / len(QUERIES)
        assert agree >= 0.9, agree
        assert max(abs(x.score - y.score) for x, y in zip(a, b) if x.label == y.label) < 0.1
    finally:
        api.stop()


@pytest.fixture(scope="module")
def calibrated(cluster):
    """`routed`: an adapter with a fitted uncertainty model (enough validation rows)."""
    with cluster.client(timeout=60) as client:
        job = client.train(
            "routed",
            banking77("train", per_label=40),
            validation_fraction=0.4,
            epochs=1,
            learning_rate=2e-3,
            request_id="fixture-routed-v1",
        )
        job = client.wait(job, timeout=600, poll_interval=0.3)
    assert job.state == "SUCCEEDED", job.error
    assert job.metrics.get("uncertainty_validation_rows", 0) > 0
    return f"routed@{job.adapter_version}"


def test_packed_serving_equals_the_padded_path(cluster, two_versions, calibrated, tmp_path):
    """The cluster's API serves packed batches (the default); a second API on the same data
    runs the padded forward (classify_packed=false). Concurrent calls of random lengths over
    three adapter versions (one with an uncertainty model, two without), some asking for sets
    and abstention, get the same answers from both: probabilities within 1e-5, the same sets
    and decisions, the same refusals."""
    padded = Proc("api", cluster.data_dir, tmp_path, port=free_port(), classify_packed="false")
    try:
        wait_serving(padded.target)
        assert "packed_batches=False" in padded.log() or '"packed_batches": false' in padded.log()
        assert "packed_batches=True" in cluster.api.log() or '"packed_batches": true' in cluster.api.log()
        rng = random.Random(18)
        pool = QUERIES + [" ".join(rng.sample(QUERIES, rng.randint(2, 12))) for _ in range(10)]
        refs = [f"intents@{v}" for v in two_versions] + [calibrated]
        calls = [
            (rng.choice(refs), rng.sample(pool, rng.randint(1, 5)), rng.random() < 0.5) for _ in range(40)
        ]

        def answers(target: str, api_key: str | None):
            def one(call):
                ref, texts, unsure = call
                with Client(target, timeout=60, api_key=api_key) as c:
                    extra = {"confidence": 0.9, "uncertainty": True} if unsure else {}
                    try:
                        return c.predict(ref, texts, probabilities=True, **extra)
                    except TuneserveError as exc:  # a version without calibration asked for it
                        return exc.code.name, str(exc)

            with ThreadPoolExecutor(8) as threads:
                return list(threads.map(one, calls))

        packed_answers = answers(cluster.api.target, cluster.api.api_key)
        padded_answers = answers(padded.target, padded.api_key)
        worst = 0.0
        answered_unsure = refused = 0
        for (_, _, unsure), got, want in zip(calls, packed_answers, padded_answers, strict=True):
            if isinstance(want, tuple):
                assert got == want and unsure and want[0] == "FAILED_PRECONDITION"
                refused += 1
                continue
            answered_unsure += unsure
            for g, w in zip(got, want, strict=True):
                assert g.label == w.label
                gp = {s.label: s.score for s in g.probabilities}
                wp = {s.label: s.score for s in w.probabilities}
                assert gp.keys() == wp.keys()
                worst = max(worst, max(abs(gp[k] - wp[k]) for k in gp))
                assert (g.prediction_set, g.abstain, g.out_of_domain) == (
                    w.prediction_set,
                    w.abstain,
                    w.out_of_domain,
                )
                if unsure:
                    assert g.prediction_set and g.ood_score == pytest.approx(w.ood_score, rel=1e-4, abs=1e-5)
        assert worst <= 1e-5, worst
        assert answered_unsure and refused  # both a calibrated and an uncalibrated version were asked
    finally:
        padded.stop()
