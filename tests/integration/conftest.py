"""Integration fixtures: real `tuneserve api` and `tuneserve worker` processes on free localhost
ports and a temporary data dir, driven through the real client."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuneserve_client import Client

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "data" / "banking77"
LABELS = ("card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banking77(split: str, labels=LABELS, per_label: int | None = None) -> list[tuple[str, str]]:
    counts: dict[str, int] = {}
    out = []
    with open(BANKING77 / f"{split}.csv", newline="") as f:
        for row in csv.DictReader(f):
            label = row["category"]
            if label in labels and (per_label is None or counts.get(label, 0) < per_label):
                counts[label] = counts.get(label, 0) + 1
                out.append((row["text"], label))
    return out


def wait_serving(target: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server at {target} did not become SERVING")


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <key>` to every call of a raw channel."""

    def __init__(self, api_key: str) -> None:
        self.pair = ("authorization", f"Bearer {api_key}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        class Details(grpc.ClientCallDetails):
            pass

        out = Details()
        out.method, out.timeout, out.credentials = details.method, details.timeout, details.credentials
        out.wait_for_ready, out.compression = details.wait_for_ready, details.compression
        out.metadata = [*(details.metadata or ()), self.pair]
        return out

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def auth_channel(proc: Proc, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A raw gRPC channel to an API process that sends its API key with every call."""
    raw = grpc.secure_channel(proc.target, credentials) if credentials else grpc.insecure_channel(proc.target)
    return grpc.intercept_channel(raw, _Bearer(proc.api_key)) if proc.api_key else raw


class Proc:
    """A tuneserve role in its own process, its output in a log file."""

    def __init__(self, role: str, data_dir: Path, log_dir: Path, port: int = 0, **settings: object) -> None:
        self.role = role
        self.port = port
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{role}-{port or os.getpid()}-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        env["TUNESERVE_DATA_DIR"] = str(data_dir)
        env["TUNESERVE_PORT"] = str(port)
        env["TUNESERVE_TORCH_THREADS"] = "1"  # 2 cores: one for the API, one for the worker
        env["TUNESERVE_REGISTRY_POLL_S"] = "0.2"
        env["TUNESERVE_WORKER_POLL_S"] = "0.2"
        env["TUNESERVE_METRICS_PORT"] = str(self.metrics_port)
        env["TUNESERVE_WORKER_METRICS_PORT"] = str(self.metrics_port)
        for key, value in settings.items():
            env[f"TUNESERVE_{key.upper()}"] = str(value)
        self.env = env
        # Auth is on by default: an API process gets an admin key of the default tenant,
        # made through the real `tuneserve keys create` against the same data dir / database.
        self.api_key: str | None = None
        if role == "api" and str(settings.get("auth", "api_key")) != "none":
            self.api_key = self.create_key("default", "admin", description="integration tests")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuneserve_server.cli", role],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def keys(self, *args: str) -> subprocess.CompletedProcess:
        """Run `tuneserve keys ARGS...` against this process's job store."""
        return subprocess.run(
            [sys.executable, "-m", "tuneserve_client.cli", "keys", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def create_key(self, tenant: str, *roles: str, description: str = "") -> str:
        """A new API key's token (`tuneserve keys create`)."""
        flags = [f"--role={r}" for r in roles]
        done = self.keys("create", "--tenant", tenant, *flags, "--description", description)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def metrics(self) -> dict[str, float]:
        """Scrape this process's /metrics: {'name{labels}': value}."""
        from urllib.request import urlopen

        from prometheus_client.parser import text_string_to_metric_families

        text = urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Cluster:
    """One API process and one worker process sharing a data dir."""

    def __init__(self, data_dir: Path, log_dir: Path, **api_settings: object) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.worker = self.start("worker")
        self.api = self.start_api(**api_settings)

    def start(self, role: str, **settings: object) -> Proc:
        proc = Proc(role, self.data_dir, self.log_dir, **settings)
        self.procs.append(proc)
        return proc

    def start_api(self, **settings: object) -> Proc:
        api = self.start("api", port=free_port(), **settings)
        wait_serving(api.target)
        return api

    def client(self, **kw: object) -> Client:
        kw.setdefault("api_key", self.api.api_key)
        return Client(self.api.target, **kw)

    def restart_api(self, sig: int = signal.SIGTERM) -> Proc:
        self.api.stop(sig)
        self.api = self.start_api()
        return self.api

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    c = Cluster(root / "data", root)
    try:
        yield c
    finally:
        c.close()
        for proc in c.procs:
            if proc.proc.returncode not in (0, -signal.SIGKILL):
                print(f"--- {proc.role} log ---\n{proc.log()[-4000:]}")


@pytest.fixture(scope="session")
def trained(cluster: Cluster):
    """A real MiniLM adapter `intents` (v1) trained through the service on Banking77 data."""
    with cluster.client(timeout=60) as client:
        job = client.train(
            "intents",
            banking77("train", per_label=30),
            epochs=3,
            learning_rate=2e-3,
            # A hold-out (12 rows), as the tests of this adapter expect; 120 rows would be
            # cross-validated by default (tests/integration/test_small_data.py covers that).
            validation_scheme="holdout",
            request_id="fixture-intents-v1",
        )
        job = client.wait(job, timeout=600, poll_interval=0.3)
    assert job.state == "SUCCEEDED", job.error
    return job
