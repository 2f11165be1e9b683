"""Composition root: settings -> stores -> engine -> servicers -> gRPC server; and the
supervised trainer worker process of the all-in-one `serve` role."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tuneserve.v1 import adapters_pb2, adapters_pb2_grpc, inference_pb2, inference_pb2_grpc
from tuneserve.v1 import datasets_pb2, datasets_pb2_grpc, training_pb2, training_pb2_grpc
from tuneserve_server.api.adapter_servicer import AdapterServicer
from tuneserve_server.api.dataset_servicer import DatasetServicer
from tuneserve_server.api.interceptors import RequestContextInterceptor
from tuneserve_server.api.inference_servicer import InferenceServicer
from tuneserve_server.api.training_servicer import TrainingServicer
from tuneserve_server.config import ConfigError, Settings
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.observability.metrics import register_job_state_collector, serve_metrics
from tuneserve_server.storage.factory import build_stores

log = structlog.get_logger("tuneserve.app")

SERVICE_NAMES = (
    training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    adapters_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name,
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
)


class ApiServer:
    """The gRPC API: starts answering at once (health NOT_SERVING), loads the base model,
    then reports SERVING."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store, self.adapter_store = build_stores(settings)
        self.engine = InferenceEngine(settings, self.store, self.adapter_store)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[RequestContextInterceptor()],
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ]
        )
        training_pb2_grpc.add_TrainingServiceServicer_to_server(
            TrainingServicer(self.store, self.engine, watch_poll_s=settings.watch_poll_s), self.server
        )
        datasets_pb2_grpc.add_DatasetServiceServicer_to_server(
            DatasetServicer(settings, self.store, self.engine), self.server
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(settings, self.engine), self.server
        )
        adapters_pb2_grpc.add_AdapterServiceServicer_to_server(
            AdapterServicer(self.store, self.adapter_store, self.engine), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    def _credentials(self) -> grpc.ServerCredentials | None:
        s = self.settings
        if s.tls_cert_file is None or s.tls_key_file is None:
            return None
        ca = s.tls_client_ca_file.read_bytes() if s.tls_client_ca_file else None
        return grpc.ssl_server_credentials(
            [(s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    async def start(self) -> int:
        address = f"{self.settings.host}:{self.settings.port}"
        creds = self._credentials()
        self.port = (
            self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("listening", address=f"{self.settings.host}:{self.port}", tls=creds is not None)
        await self.engine.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", base_model=self.engine.source.model_id)
        return self.port

    async def stop(self) -> None:
        """Drain: health NOT_SERVING (still answering for drain_delay_s so balancers move
        away), then refuse new calls and give in-flight ones grace_s to finish."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.settings.drain_delay_s:
            await asyncio.sleep(self.settings.drain_delay_s)
        await self.server.stop(self.settings.grace_s)
        await self.engine.stop()
        self.store.close()


class WorkerSupervisor:
    """Runs `tuneserve worker` as a child process and restarts it if it dies. The child
    watches this process too: if the API dies, the worker finishes its job, then exits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def _spawn(self) -> None:
        env = {**os.environ, **self.settings.to_env()}
        cmd = [sys.executable, "-m", "tuneserve_server.cli", "worker", "--parent-pid", str(os.getpid())]
        self.proc = subprocess.Popen(cmd, env=env)
        self.started = time.monotonic()
        log.info("worker process started", pid=self.proc.pid)

    def start(self) -> None:
        self._spawn()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            await asyncio.sleep(0.5)
            if self.proc and self.proc.poll() is not None and not self._stopping:
                if time.monotonic() - self.started > 60:
                    backoff = 1.0  # it ran a good while: not a crash loop
                log.error("worker process exited; restarting", code=self.proc.returncode, backoff=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._spawn()

    async def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def run_api(settings: Settings, *, with_worker: bool) -> None:
    server = ApiServer(settings)
    supervisor = WorkerSupervisor(settings) if with_worker else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        metrics_port = serve_metrics(settings.metrics_port, settings.metrics_host)
    except OSError as exc:
        raise ConfigError(
            f"setting metrics_port: cannot serve /metrics on {settings.metrics_host}:"
            f"{settings.metrics_port} ({exc.strerror}); pick a free port or 0 to turn it off"
        ) from None
    if metrics_port:
        log.info("metrics", address=f"{settings.metrics_host}:{metrics_port}")
    register_job_state_collector(server.store)
    if supervisor:
        supervisor.start()
    serving = asyncio.ensure_future(server.start())
    await asyncio.wait({serving, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        serving.result()  # a failed start raises here
        await stop.wait()
    log.info("shutting down", grace_s=settings.grace_s, drain_delay_s=settings.drain_delay_s)
    stopping = [server.stop()]
    if supervisor:
        stopping.append(supervisor.stop())
    await asyncio.gather(*stopping)
    if not serving.done():
        serving.cancel()
    log.info("stopped")
