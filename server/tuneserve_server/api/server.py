"""The gRPC server: construction (interceptors, message limits, credentials), servicer
registration, health and reflection. It answers as soon as it starts (health NOT_SERVING);
the composition root flips it to SERVING once the engine is up."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tuneserve.v1 import (
    adapters_pb2,
    adapters_pb2_grpc,
    datasets_pb2,
    datasets_pb2_grpc,
    evaluations_pb2,
    evaluations_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    server_info_pb2,
    server_info_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tuneserve_server.api.adapter_servicer import AdapterServicer
from tuneserve_server.api.auth_interceptor import AuthInterceptor
from tuneserve_server.api.dataset_servicer import DatasetServicer
from tuneserve_server.api.evaluation_servicer import EvaluationServicer
from tuneserve_server.api.inference_servicer import InferenceServicer
from tuneserve_server.api.interceptors import RequestContextInterceptor
from tuneserve_server.api.server_info_servicer import ServerInfoServicer
from tuneserve_server.api.training_servicer import TrainingServicer
from tuneserve_server.config import Settings
from tuneserve_server.services import Services
from tuneserve_server.services.auth import Authenticator

log = structlog.get_logger("tuneserve.app")

SERVICE_NAMES = (
    training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    adapters_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name,
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
    server_info_pb2.DESCRIPTOR.services_by_name["ServerInfoService"].full_name,
    evaluations_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,
)
# The largest request message the server receives (GetServerInfo reports it).
MAX_REQUEST_BYTES = 64 * 1024 * 1024


class ApiServer:
    def __init__(self, settings: Settings, services: Services, authenticator: Authenticator) -> None:
        self.settings = settings
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        # Order: the request context (request id, access log, metrics) is outermost, so a call
        # refused by authentication still has its request id, log line and metrics, and its
        # auth.failed audit event carries the request id; the auth interceptor then runs
        # before any servicer code, for every unary and streaming method.
        auth = AuthInterceptor(authenticator, reflection_requires_auth=settings.reflection_requires_auth)
        self.server = grpc.aio.server(
            interceptors=[RequestContextInterceptor(), auth],
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        training_pb2_grpc.add_TrainingServiceServicer_to_server(
            TrainingServicer(services.training), self.server
        )
        datasets_pb2_grpc.add_DatasetServiceServicer_to_server(
            DatasetServicer(services.datasets, services.training), self.server
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(services.prediction), self.server
        )
        adapters_pb2_grpc.add_AdapterServiceServicer_to_server(
            AdapterServicer(services.adapters, services.transfer), self.server
        )
        server_info_pb2_grpc.add_ServerInfoServiceServicer_to_server(
            ServerInfoServicer(services.server_info), self.server
        )
        if services.evaluations is not None:
            evaluations_pb2_grpc.add_EvaluationServiceServicer_to_server(
                EvaluationServicer(services.evaluations), self.server
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    def _credentials(self) -> grpc.ServerCredentials | None:
        """TLS from tls_cert_file/tls_key_file (and client certificates required when
        tls_client_ca_file is set), reloaded without a restart: grpc asks `_CertificateFiles`
        for the configuration at each new TLS handshake, and it re-reads the files when one
        has changed (a rotated Secret, cert-manager renewal)."""
        s = self.settings
        if s.tls_cert_file is None or s.tls_key_file is None:
            return None
        files = _CertificateFiles(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        return grpc.dynamic_ssl_server_credentials(
            files.initial(),
            files.fetch,
            require_client_authentication=s.tls_client_ca_file is not None,
        )

    async def start(self) -> int:
        """Bind and start answering (health NOT_SERVING). Returns the port bound."""
        address = f"{self.settings.host}:{self.settings.port}"
        creds = self._credentials()
        self.port = (
            self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        )
        await self.set_serving(False)
        await self.server.start()
        log.info("listening", address=f"{self.settings.host}:{self.port}", tls=creds is not None)
        return self.port

    async def stop(self, grace_s: float | None) -> None:
        """Refuse new calls; give in-flight ones `grace_s` to finish."""
        await self.server.stop(grace_s)


class _CertificateFiles:
    """The server's certificate, key and client CA files, as grpc certificate
    configurations. `fetch` runs at every TLS handshake: it stats the files and, when one
    changed (mtime or size), loads them again, so connections made after a rotation get the
    new certificate while established ones keep theirs. A rotation caught half-way (a key that
    does not match its certificate, a file missing or unparsable) keeps the previous
    configuration and is retried at the next handshake."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.paths = tuple(p for p in (cert, key, client_ca) if p is not None)
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamp: tuple[tuple[int, int], ...] | None = None
        self._lock = threading.Lock()

    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self.paths:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        # the stdlib's TLS checks the PEMs parse and the key belongs to the certificate
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        check.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            check.load_verify_locations(cafile=self.client_ca)
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
        )

    def initial(self) -> grpc.ServerCertificateConfiguration:
        stamp = self._stat()
        config = self._load()  # at start a bad file is an error, not a warning
        self._stamp = stamp
        return config

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """None: keep the current configuration."""
        try:
            with self._lock:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                config = self._load()
                self._stamp = stamp
        except (OSError, ssl.SSLError) as exc:
            log.warning("tls_reload_failed", error=str(exc), files=[str(p) for p in self.paths])
            return None
        log.info("tls_reloaded", files=[str(p) for p in self.paths])
        return config
