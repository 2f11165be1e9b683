"""Composition root: settings -> stores -> engine -> services -> gRPC server; and the
supervised trainer worker process of the all-in-one `serve` role."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time

import structlog

from tuneserve_server.api.openai_http import OpenAIHttpServer
from tuneserve_server.api.server import MAX_REQUEST_BYTES, ApiServer
from tuneserve_server.config import ConfigError, Settings
from tuneserve_server.domain.server_info import AuthSummary, RequestLimits
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.observability.metrics import register_job_state_collector, serve_metrics
from tuneserve_server.services import Services
from tuneserve_server.services.adapter_transfer import AdapterTransferService
from tuneserve_server.services.adapters import AdapterService
from tuneserve_server.services.auth import Authenticator
from tuneserve_server.services.datasets import DatasetService
from tuneserve_server.services.evaluations import EvaluationLimits, EvaluationService
from tuneserve_server.services.feedback import FeedbackService
from tuneserve_server.services.inference import PredictionService, PredictLimits
from tuneserve_server.services.jwt_auth import JwtVerifier
from tuneserve_server.services.mtls import parse_mtls_tenants, principal_from_peer
from tuneserve_server.services.prediction_log import PredictionLog, PredictionLogSettings
from tuneserve_server.services.quotas import quotas_of
from tuneserve_server.services.server_info import ServerInfoService
from tuneserve_server.services.training import TrainingService
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.factory import build_stores
from tuneserve_server.storage.job_store import JobStore

log = structlog.get_logger("tuneserve.app")


def build_authenticator(settings: Settings, store: JobStore) -> Authenticator:
    """API keys always; JWTs when a JWKS is configured; client certificates listed in
    mtls_tenants."""
    tokens = [JwtVerifier(settings).principal] if settings.jwt_jwks else []
    mapping = parse_mtls_tenants(settings.mtls_tenants)
    peers = [functools.partial(principal_from_peer, mapping=mapping)] if mapping else []
    return Authenticator(settings, store, token_verifiers=tokens, peer_verifiers=peers)


def build_services(
    settings: Settings, store: JobStore, adapter_store: AdapterStore, engine: InferenceEngine
) -> Services:
    prediction_log = PredictionLog(
        store,
        PredictionLogSettings(
            enabled=settings.prediction_ids,
            flush_s=settings.prediction_log_flush_s,
            retention_s=settings.prediction_retention_s,
            max_per_tenant=settings.max_predictions_per_tenant,
        ),
    )
    return Services(
        prediction_log=prediction_log,
        feedback=FeedbackService(
            store,
            engine,
            prediction_log,
            max_text_chars=settings.max_text_chars,
            max_feedback_per_tenant=settings.max_feedback_per_tenant,
            max_dataset_bytes=settings.max_dataset_bytes,
            quotas=quotas_of(settings),
        ),
        training=TrainingService(store, engine, watch_poll_s=settings.watch_poll_s),
        datasets=DatasetService(
            store,
            engine,
            max_dataset_bytes=settings.max_dataset_bytes,
            max_text_chars=settings.max_text_chars,
            quotas=quotas_of(settings),
        ),
        adapters=AdapterService(store, adapter_store, engine),
        evaluations=EvaluationService(
            store,
            engine,
            EvaluationLimits(
                max_rows=settings.max_evaluation_rows,
                max_targets=settings.max_evaluation_targets,
                max_text_chars=settings.max_text_chars,
            ),
            quotas=quotas_of(settings),
            watch_poll_s=settings.watch_poll_s,
        ),
        transfer=AdapterTransferService(
            store,
            adapter_store,
            engine,
            max_adapter_bytes=settings.max_adapter_bytes,
            quotas=quotas_of(settings),
        ),
        prediction=PredictionService(
            engine,
            PredictLimits(
                max_inputs=settings.max_predict_inputs,
                max_text_chars=settings.max_text_chars,
                max_new_tokens_default=settings.max_new_tokens_default,
                max_new_tokens_limit=settings.max_new_tokens_limit,
                log_payloads=settings.log_payloads,
            ),
        ),
        server_info=ServerInfoService(
            engine,
            limits=RequestLimits(
                max_predict_inputs=settings.max_predict_inputs,
                max_text_chars=settings.max_text_chars,
                max_train_examples=settings.max_train_examples,
                max_lora_rank=settings.max_lora_rank,
                max_dataset_bytes=settings.max_dataset_bytes,
                max_request_bytes=MAX_REQUEST_BYTES,
                max_new_tokens_default=settings.max_new_tokens_default,
                max_new_tokens_limit=settings.max_new_tokens_limit,
            ),
            auth=AuthSummary(
                mode=settings.auth,
                jwt=settings.auth != "none" and bool(settings.jwt_jwks),
                client_certificates=settings.auth != "none"
                and bool(parse_mtls_tenants(settings.mtls_tenants)),
                reflection_requires_auth=settings.reflection_requires_auth,
            ),
            quotas=quotas_of(settings),
        ),
    )


async def sweep_uploads_every(interval_s: float, datasets: DatasetService) -> None:
    """Every `interval_s`, forget uploads idle past the TTL (starting an upload sweeps too):
    an abandoned upload goes even when no other one comes. Runs until cancelled."""
    while True:
        try:
            await datasets.sweep_uploads()
        except Exception:  # a database hiccup: try again next round
            log.exception("upload sweep failed")
        await asyncio.sleep(interval_s)


class App:
    """The API role: stores, the engine, the services over them and the gRPC server. It
    starts answering at once (health NOT_SERVING), loads the base model, then reports
    SERVING."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store, self.adapter_store = build_stores(settings)
        self.engine = InferenceEngine(settings, self.store, self.adapter_store)
        self.services = build_services(settings, self.store, self.adapter_store, self.engine)
        authenticator = build_authenticator(settings, self.store)
        self.api = ApiServer(settings, self.services, authenticator)
        # The OpenAI-compatible HTTP endpoints: same services, engine and authenticator.
        self.http = OpenAIHttpServer(settings, self.services, authenticator) if settings.openai_port else None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> int:
        port = await self.api.start()
        if self.http is not None:  # answers 503 until the engine is ready, like gRPC
            await self.http.start()
        if self.settings.upload_sweep_interval_s > 0:
            self._sweeper = asyncio.get_running_loop().create_task(
                sweep_uploads_every(self.settings.upload_sweep_interval_s, self.services.datasets)
            )
        if self.services.prediction_log is not None:
            self.services.prediction_log.start()
        await self.engine.start()
        await self.api.set_serving(True)
        log.info("serving", base_model=self.engine.source.model_id)
        return port

    async def stop(self) -> None:
        """Drain: health NOT_SERVING (still answering for drain_delay_s so balancers move
        away), then refuse new calls and give in-flight ones grace_s to finish."""
        await self.api.set_serving(False)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.settings.drain_delay_s:
            await asyncio.sleep(self.settings.drain_delay_s)
        if self.http is not None:  # in-flight HTTP requests get grace_s, as gRPC calls do
            await asyncio.gather(self.http.stop(), self.api.stop(self.settings.grace_s))
        else:
            await self.api.stop(self.settings.grace_s)
        if self.services.prediction_log is not None:
            await self.services.prediction_log.stop()  # what was served before the stop is kept
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
    app = App(settings)
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
    register_job_state_collector(app.store)
    if supervisor:
        supervisor.start()
    serving = asyncio.ensure_future(app.start())
    await asyncio.wait({serving, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        serving.result()  # a failed start raises here
        await stop.wait()
    log.info("shutting down", grace_s=settings.grace_s, drain_delay_s=settings.drain_delay_s)
    stopping = [app.stop()]
    if supervisor:
        stopping.append(supervisor.stop())
    await asyncio.gather(*stopping)
    if not serving.done():
        serving.cancel()
    log.info("stopped")
