"""The JobStore protocol: durable jobs, their leases, and the adapter registry.

The registry lives in the same store as the jobs because a job's success and the new
adapter version it publishes must commit together."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from tuneserve_server.domain.aliases import AliasMove, AliasRecord
from tuneserve_server.domain.jobs import Job, JobEvent, JobProgress, JobSpec, JobState
from tuneserve_server.domain.records import AdapterVersionRecord, DatasetRecord, UploadState
from tuneserve_server.domain.tenancy import ApiKeyRecord


class JobStore(Protocol):
    # --- jobs, caller side
    def create_job(self, spec: JobSpec, report: dict | None = None) -> tuple[Job, bool]:
        """Insert a QUEUED job (with the data report it passed); idempotent on
        (namespace, request_id): returns (job, created)."""

    def get_job(self, namespace: str, job_id: str) -> Job: ...

    def list_jobs(
        self,
        namespace: str,
        *,
        states: Sequence[JobState] = (),
        adapter_name: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[Job], str]: ...

    def count_jobs_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state, across namespaces (states with none: absent)."""

    def namespace_usage(self, namespace: str) -> dict[str, int]:
        """What a namespace holds against its quotas, read in one statement: `active_jobs`
        (QUEUED + RUNNING), `dataset_bytes` (stored datasets), `upload_bytes` (bytes received
        by unfinished uploads within their TTL), `adapter_versions` (published, not deleted)."""

    def cancel_job(self, namespace: str, job_id: str) -> Job:
        """QUEUED -> CANCELLED at once; RUNNING -> cancel requested (the worker stops it);
        terminal -> FailedPrecondition."""

    # --- jobs, worker side
    def claim_job(self, worker_id: str, lease_seconds: float) -> tuple[Job, JobSpec] | None:
        """Return expired leases to the queue (or fail them past max attempts), then take a QUEUED job under a lease: the oldest one of
        the namespace with the fewest RUNNING jobs (ties: the namespace whose oldest queued job
        is oldest), so a namespace with many queued jobs does not starve one with few. None when there is nothing to do."""

    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float, progress: JobProgress) -> bool:
        """Extend the lease and record progress; returns True when cancel was requested.
        Raises LeaseLost when the job is no longer this worker's."""

    def complete_job(
        self,
        job_id: str,
        worker_id: str,
        metrics: dict[str, float],
        adapter: AdapterVersionRecord,
        outputs: dict | None = None,
        *,
        promote: bool = True,
        promote_reason: str = "promotion policy always",
    ) -> Job:
        """Mark SUCCEEDED and register the adapter version, in one transaction; with
        `promote` (policy always, or an if_better gate passed) `default` moves to it in the
        same transaction when it is newer than `default`'s version; an adapter's first
        version always becomes `default`. `outputs`: what the job produced besides the
        adapter ({"sample_generations": [...], "promotion": {...}}); its "promotion" entry
        gets "promoted" (whether `default` moved)."""

    def finish_job(self, job_id: str, worker_id: str, state: JobState, error: str = "") -> Job:
        """Mark FAILED or CANCELLED."""

    def release_job(self, job_id: str, worker_id: str) -> Job:
        """Give a RUNNING job back to the queue (worker shutdown); the attempt is not counted."""

    def record_resume(self, job_id: str, worker_id: str, step: int) -> None:
        """Note that this attempt resumed from a checkpoint at `step` (and log an event)."""

    # --- job events: every state change is logged by the store in the same transaction
    def append_events(
        self, job_id: str, events: Sequence[JobEvent], worker_id: str | None = None
    ) -> list[int]:
        """Append events (their sequence numbers are assigned here: 1, 2, 3, ... per job,
        without gaps); returns the sequence numbers. With `worker_id`, only while that worker
        holds the job's lease (else LeaseLost): a stalled worker cannot write into the log of
        the attempt that replaced it."""

    def list_events(
        self, namespace: str, job_id: str, after_seq: int = 0, limit: int = 500
    ) -> list[JobEvent]:
        """Events with sequence > after_seq, in order. NotFound for a job not in namespace."""

    # --- datasets: uploads arrive in chunks, are verified and parsed as a stream, then kept
    def begin_upload(self, namespace: str, upload_id: str, header: dict) -> UploadState | DatasetRecord:
        """Start or resume an upload (AlreadyExists when upload_id names another file; a
        "display_name" key is kept for listing, not compared); a finished upload_id returns
        its dataset."""

    def add_upload_chunk(self, namespace: str, upload_id: str, offset: int, data: bytes) -> int:
        """Append bytes at `offset`, which must equal the bytes received so far; returns
        the new total."""

    def iter_upload_chunks(self, namespace: str, upload_id: str, start: int = 0) -> Iterator[bytes]:
        """An open upload's bytes from `start`, in order, a stored chunk at a time."""

    def upload_bytes(self, namespace: str, upload_id: str) -> bytes:
        """An open upload's bytes joined (b"" when there is none)."""

    def discard_upload(self, namespace: str, upload_id: str) -> bool:
        """Forget an unfinished upload; False when there was none."""

    def list_uploads(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[UploadState], str]:
        """Unfinished uploads of the namespace that have not expired, by upload_id."""

    def sweep_uploads(self) -> int:
        """Forget uploads idle for longer than the TTL; returns how many."""

    def finish_upload(
        self, record: DatasetRecord, content: bytes | None = None
    ) -> tuple[DatasetRecord, bool]:
        """Store the dataset and close its upload, in one transaction; (dataset, created).
        Without `content` the upload's stored chunks become the dataset's bytes."""

    def get_dataset(self, namespace: str, dataset_id: str) -> DatasetRecord: ...

    def dataset_content(self, namespace: str, dataset_id: str) -> bytes: ...

    def list_datasets(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[DatasetRecord], str]: ...

    def delete_dataset(self, namespace: str, dataset_id: str) -> None: ...

    # --- adapter registry
    def reserve_adapter_version(self, namespace: str, name: str) -> int:
        """Next version number for namespace/name; never handed out twice."""

    def register_adapter_version(self, adapter: AdapterVersionRecord, *, promote: bool = True) -> None:
        """Register a published version no job trained (ImportAdapter; `adapter.job_id`
        says where it came from): the registry row complete_job writes, through the same
        code. AlreadyExists when that version is registered already."""

    def adapter_versions(
        self, namespace: str, name: str | None = None, *, include_deleted: bool = False
    ) -> list[AdapterVersionRecord]: ...

    def adapter_names(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[str], str]: ...

    def delete_adapter_versions(
        self, namespace: str, name: str, version: int | None = None, *, actor: str = ""
    ) -> list[AdapterVersionRecord]:
        """Mark versions deleted; returns those it deleted. NotFound if none matched;
        FailedPrecondition (naming them) when an alias points at the version. Deleting the
        whole adapter removes its aliases too."""

    def adapter_changes(self, after_seq: int, limit: int = 1000) -> list[AdapterVersionRecord]:
        """Registry rows (published or deleted) changed after `after_seq`, by seq."""

    # --- aliases (storage/sql_aliases.py): moves are atomic and leave history
    def set_alias(
        self,
        namespace: str,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str,
        tenant: str,
        reason: str,
        max_aliases: int,
    ) -> AliasMove: ...

    def remove_alias(
        self, namespace: str, name: str, alias: str, *, actor: str, tenant: str, reason: str
    ) -> AliasMove: ...

    def rollback_alias(
        self, namespace: str, name: str, alias: str, *, actor: str, tenant: str, reason: str
    ) -> AliasMove: ...

    def adapter_aliases(self, namespace: str, name: str | None = None) -> list[AliasRecord]: ...

    def alias_history(
        self, namespace: str, name: str, *, alias: str = "", page_size: int = 50, page_token: str = ""
    ) -> tuple[list[AliasMove], str]: ...

    def registry_changes(
        self, after_seq: int, limit: int = 1000
    ) -> tuple[list[AdapterVersionRecord], list[AliasRecord]]:
        """Versions and aliases changed after `after_seq`, as one consistent cut (what
        serving replicas poll)."""

    def alias_changes(self, after_seq: int, limit: int = 1000) -> list[AliasRecord]:
        """Alias rows changed after `after_seq` (same clock as adapter_changes), by seq."""

    # --- API keys (services/keys.py makes and verifies them; the store keeps only hashes)
    def insert_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Store a new key (AlreadyExists if its key_id is taken); returns it as stored,
        with created_at from the store's clock."""

    def api_key(self, key_id: str) -> ApiKeyRecord:
        """The key, revoked or not. NotFound when it never existed."""

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        """Every key (of one tenant, when given), revoked ones included."""

    def revoke_api_key(self, key_id: str) -> ApiKeyRecord:
        """Set revoked_at (once: revoking again keeps the first time). NotFound if unknown."""

    def close(self) -> None: ...
