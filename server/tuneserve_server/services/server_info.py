"""GetServerInfo: the configured limits, quotas and authentication (fixed at start-up)
next to what the engine loaded (base model, task family, token bounds)."""

from __future__ import annotations

from importlib import metadata

from tuneserve_server.domain.server_info import AuthSummary, Features, RequestLimits, ServerInfo
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.services.readiness import require_ready


def tuneserve_version() -> str:
    """The installed tuneserve distribution's version; "unknown" when run from a source tree
    that was never installed."""
    try:
        return metadata.version("tuneserve")
    except metadata.PackageNotFoundError:
        return "unknown"


class ServerInfoService:
    def __init__(
        self,
        engine: InferenceEngine,
        *,
        limits: RequestLimits,
        auth: AuthSummary,
        quotas: Quotas,
        version: str | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.auth = auth
        self.quotas = quotas
        self.version = version or tuneserve_version()

    def info(self) -> ServerInfo:
        """NotReady (UNAVAILABLE) until the base model is loaded: its task decides the rest."""
        require_ready(self.engine)
        model = self.engine.served_model()
        return ServerInfo(
            version=self.version,
            model=model,
            limits=self.limits,
            auth=self.auth,
            features=Features.of(model),
            quotas=self.quotas,
        )
