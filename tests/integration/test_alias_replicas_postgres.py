"""An alias move seen by a second replica: two API processes and one trainer worker share one
PostgreSQL job store and adapter store. A version trained under `manual` is served by neither
API's bare name; a promote through one API reaches the other within the bound new versions
have (registry polling), and a rollback through the other comes back the same way."""

from __future__ import annotations

import statistics
import time

import grpc
import pytest
from conftest import Proc, auth_channel, banking77, free_port, wait_serving

from tuneserve.v1 import inference_pb2, inference_pb2_grpc

PROBE = "my card has not arrived yet"


def served_version(api: Proc, adapter: str) -> int:
    with auth_channel(api) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            reply = stub.Predict(inference_pb2.PredictRequest(adapter=adapter, inputs=[PROBE]), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
    return reply.adapter_version


def wait_served(api: Proc, adapter: str, want: int, timeout: float = 30.0) -> float:
    """Seconds until `api` answers `adapter` with version `want` (the timeout is liveness only:
    how fast a move propagates is bench/promotion_propagation.py's to measure, not a test's)."""
    start = time.monotonic()
    while served_version(api, adapter) != want:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{api.target} still serves {served_version(api, adapter)} for {adapter}")
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def replicas(postgres_dsn, tmp_path):
    common = dict(
        database_url=postgres_dsn,
        adapter_dir=tmp_path / "shared-adapters",
        worker_lease_s=10,
        registry_poll_s=0.2,
    )
    procs = {
        "worker": Proc("worker", tmp_path / "node1", tmp_path, **common),
        "api-1": Proc("api", tmp_path / "node1", tmp_path, port=free_port(), **common),
        "api-2": Proc("api", tmp_path / "node2", tmp_path, port=free_port(), **common),
    }
    try:
        for name in ("api-1", "api-2"):
            wait_serving(procs[name].target)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def test_an_alias_move_reaches_the_other_replica(replicas):
    from tuneserve_client import Client

    api1, api2 = replicas["api-1"], replicas["api-2"]
    data = banking77("train", per_label=8)
    with (
        Client(api1.target, timeout=60, api_key=api1.api_key) as c1,
        Client(api2.target, timeout=60, api_key=api2.api_key) as c2,
    ):
        v1 = c1.wait(
            c1.train("shared", data, epochs=1, seed=1, validation_scheme="holdout"),
            timeout=600,
            poll_interval=0.2,
        )
        v2 = c1.wait(
            c1.train("shared", data, epochs=1, seed=2, promotion="manual", validation_scheme="holdout"),
            timeout=600,
            poll_interval=0.2,
        )
        assert (v1.state, v2.state) == ("SUCCEEDED", "SUCCEEDED"), (v1.error, v2.error)
        for api in (api1, api2):  # both know v2 (by version) and neither serves it by name
            wait_served(api, "shared@2", 2)
            assert served_version(api, "shared") == 1

        delays = []
        for i in range(3):  # promote on one replica, rollback on the other, seen by both
            c1.promote_version("shared@2", reason=f"round {i}")
            delays.append(wait_served(api2, "shared", 2))
            assert served_version(api1, "shared") == 2
            c2.rollback("shared", reason=f"round {i}")
            delays.append(wait_served(api1, "shared", 1))
            assert served_version(api2, "shared") == 1

        c2.set_alias("shared@2", "canary")
        delays.append(wait_served(api1, "shared@canary", 2))
        history = list(c1.alias_history("shared"))
        assert [(m.alias, m.to_version) for m in history[:3]] == [
            ("canary", 2),
            ("default", 1),
            ("default", 2),
        ]
    print(
        f"\nalias move -> served by the other API: p50 {statistics.median(delays) * 1000:.0f} ms, "
        f"max {max(delays) * 1000:.0f} ms over {len(delays)} (registry_poll_s=0.2)"
    )
