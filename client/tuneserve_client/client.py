"""Synchronous client for the tuneserve gRPC API."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuneserve.v1 import (
    adapters_pb2,
    adapters_pb2_grpc,
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    evaluations_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    server_info_pb2,
    server_info_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tuneserve_client.aliases import AliasMove, move_from_pb, promotion_pb
from tuneserve_client.archive import HEAD_FILE, pack_directory, unpack_to
from tuneserve_client.errors import Unavailable, from_rpc_error
from tuneserve_client.evaluations import EvaluationsMixin
from tuneserve_client.feedback import FeedbackMixin
from tuneserve_client.hyperparameters import doc as hyperparameters_doc
from tuneserve_client.hyperparameters import set_hyperparameters
from tuneserve_client.reports import (
    DataReport,
    Dataset,
    JobEvent,
    Upload,
    data_report_from_pb,
    dataset_from_pb,
    job_event_from_pb,
    upload_from_pb,
)
from tuneserve_client.types import (
    Adapter,
    Classification,
    ExportedAdapter,
    Generation,
    GenerationStream,
    Job,
    LoadedAdapter,
    ServerInfo,
    adapter_from_pb,
    generation_from_pb,
    job_from_pb,
    prediction_from_pb,
    server_info_from_pb,
    state_to_pb,
    task_to_pb,
)

DEFAULT_TARGET = "localhost:50051"

ExampleLike = tuple[str, str] | Mapping[str, Any]
Metadata = Sequence[tuple[str, str]] | Mapping[str, str]

_R = TypeVar("_R")


def _causal_example_pb(item: Mapping[str, Any], index: int, field: str) -> common_pb2.Example:
    """{"prompt", "completion"} or {"messages": [{"role", "content"}, ...]}: a causal-LM example."""
    if "messages" in item:
        try:
            messages = [
                common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in item["messages"]
            ]
        except (TypeError, KeyError):
            raise ValueError(f"{field}[{index}]: messages are {{'role', 'content'}} dicts") from None
        return common_pb2.Example(causal_lm=common_pb2.CausalLMExample(messages=messages))
    if not isinstance(item.get("prompt"), str) or not isinstance(item.get("completion"), str):
        raise ValueError(f"{field}[{index}]: a causal-LM example needs str 'prompt' and 'completion'")
    return common_pb2.Example(
        causal_lm=common_pb2.CausalLMExample(prompt=item["prompt"], completion=item["completion"])
    )


def _preference_example_pb(item: Mapping[str, Any], index: int, field: str) -> common_pb2.Example:
    """{"prompt" or "messages", "chosen", "rejected"}: a preference pair (messages: the prompt
    turns, before the reply)."""
    if not isinstance(item.get("chosen"), str) or not isinstance(item.get("rejected"), str):
        raise ValueError(f"{field}[{index}]: a preference example needs str 'chosen' and 'rejected'")
    pair = common_pb2.PreferenceExample(chosen=item["chosen"], rejected=item["rejected"])
    if "messages" in item:
        try:
            pair.messages.extend(
                common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in item["messages"]
            )
        except (TypeError, KeyError):
            raise ValueError(f"{field}[{index}]: messages are {{'role', 'content'}} dicts") from None
    elif isinstance(item.get("prompt"), str):
        pair.prompt = item["prompt"]
    else:
        raise ValueError(f"{field}[{index}]: a preference example needs a str 'prompt' or 'messages'")
    return common_pb2.Example(preference=pair)


def _example_pb(item: ExampleLike, index: int, field: str) -> common_pb2.Example:
    if isinstance(item, Mapping) and "chosen" in item:
        return _preference_example_pb(item, index, field)
    if isinstance(item, Mapping) and ("prompt" in item or "messages" in item):
        return _causal_example_pb(item, index, field)
    if isinstance(item, Mapping):
        if "text" not in item or "label" not in item:
            raise ValueError(f"{field}[{index}]: a dict example needs 'text' and 'label' keys")
        text, label = item["text"], item["label"]
    else:
        try:
            text, label = item
        except (TypeError, ValueError):
            raise ValueError(
                f"{field}[{index}]: expected a (text, label) pair or a dict, got {item!r}"
            ) from None
    if not isinstance(text, str):
        raise TypeError(f"{field}[{index}]: text must be a str, got {type(text).__name__}")
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str):
        raise TypeError(f"{field}[{index}]: label must be a str, got {type(label).__name__}")
    return common_pb2.Example(classification=common_pb2.ClassificationExample(text=text, label=label))


def _examples_pb(items: Iterable[ExampleLike], field: str) -> list[common_pb2.Example]:
    return [_example_pb(item, i, field) for i, item in enumerate(items)]


def tls_credentials(
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: `ca_file` the CA bundle that signed the server's
    certificate (None: the system's roots); `cert_file` + `key_file` a client certificate for
    servers that require one (mTLS). Raises OSError when a file cannot be read."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")

    def read(path: str | os.PathLike[str] | None) -> bytes | None:
        return None if path is None else Path(path).read_bytes()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file), private_key=read(key_file), certificate_chain=read(cert_file)
    )


def _dataset_id(dataset: str | Dataset | None) -> str:
    return "" if dataset is None else dataset.id if isinstance(dataset, Dataset) else dataset


class Client(FeedbackMixin, EvaluationsMixin):
    """A connection to a tuneserve server; use as a context manager or call `close()`.

    Every RPC gets a deadline: `timeout` seconds unless the method's own `timeout` says
    otherwise. Failed RPCs raise `TuneserveError` subclasses. `credentials` (see
    `tls_credentials`) make the channel TLS; `api_key` is sent with every call as
    `authorization: Bearer <key>` metadata. `namespace` empty (the default) means the
    tenant of the credential (the server's "default" namespace with auth none); another
    tenant's namespace is refused unless the key is an admin's.
    """

    #: Sleeps before each retry of Train after UNAVAILABLE (3 retries).
    retry_backoff: tuple[float, ...] = (0.25, 0.5, 1.0)

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 30.0,
        namespace: str = "",
        channel: grpc.Channel | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.namespace = namespace
        self._metadata = tuple((metadata.items() if isinstance(metadata, Mapping) else metadata) or ())
        if api_key:
            self._metadata += (("authorization", f"Bearer {api_key}"),)
        self._owns_channel = channel is None
        if channel is None:
            if credentials is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = channel
        self._training = training_pb2_grpc.TrainingServiceStub(channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(channel)
        self._adapters = adapters_pb2_grpc.AdapterServiceStub(channel)
        self._datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
        self._server_info = server_info_pb2_grpc.ServerInfoServiceStub(channel)
        self._evaluations = evaluations_pb2_grpc.EvaluationServiceStub(channel)

    # --- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel (unless it was passed in by the caller)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------

    def _call(self, method: Callable[..., _R], request: Any, timeout: float | None) -> _R:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata or None,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    # --- training ---------------------------------------------------------------------

    def train(
        self,
        adapter: str,
        examples: Iterable[ExampleLike] = (),
        *,
        task: str = "classification",
        dataset: str | Dataset | None = None,
        validation: Iterable[ExampleLike] | None = None,
        validation_dataset: str | Dataset | None = None,
        validation_fraction: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        promotion: str | None = None,
        promotion_metric: str | None = None,
        promotion_tolerance: float | None = None,
        promotion_eval_dataset: str | Dataset | None = None,
        init_from: str | None = None,
        **hyperparameters: Any,
    ) -> Job:
        """Submit a training job for a new version of `adapter`.

        `examples` and `validation` hold (text, label) pairs or {"text", "label"} dicts; for
        task="causal_lm", {"prompt", "completion"} or {"messages": [{"role", "content"}...]}
        dicts (`train_on_prompt`, `sample_generations`: the causal-LM settings); for
        task="preference" (DPO), {"prompt" or "messages", "chosen", "rejected"} dicts
        (`beta`, `loss_type`, `label_smoothing`: the preference settings). Instead of
        inline examples, `dataset` / `validation_dataset` name uploaded datasets (an id or a
        `Dataset`). The server checks the data first and refuses bad data with
        `InvalidArgument` whose `.data_report` says why; the returned job's `data_report`
        holds the warnings.
        `promotion`: how the new version is released: "always" (the server's default:
        `default`, what the bare name serves, moves to it), "manual" (registered only;
        `promote_version` moves `default`) or "if_better" (evaluated against `default` on
        `promotion_eval_dataset`, else the adapter's stored evaluation set, and promoted
        unless `promotion_metric` regresses by more than `promotion_tolerance`).
        `init_from`: continue training from "name@version" or "name@alias".
        `hyperparameters`: the training options below (one per field of the proto
        `Hyperparameters`); those left out or None take the server's defaults. The call is
        retried with the same `request_id` (a fresh UUID by default) when the server is
        UNAVAILABLE.

        Hyperparameters:
        """
        request = training_pb2.TrainRequest(
            namespace=self.namespace,
            adapter_name=adapter,
            task=task_to_pb(task),
            training_examples=_examples_pb(examples, "examples"),
            request_id=request_id or uuid.uuid4().hex,
            dataset_id=_dataset_id(dataset),
            validation_dataset_id=_dataset_id(validation_dataset),
        )
        if validation is not None:
            request.validation_examples.extend(_examples_pb(validation, "validation"))
        if validation_fraction is not None:
            request.validation_fraction = validation_fraction
        chosen = promotion_pb(
            promotion, promotion_metric, promotion_tolerance, _dataset_id(promotion_eval_dataset)
        )
        if chosen is not None:
            request.promotion.CopyFrom(chosen)
        if init_from:
            request.init_from = init_from

        set_hyperparameters(hyperparameters, request.hyperparameters)

        response = self._retrying(lambda t: self._call(self._training.Train, request, t), timeout)
        return job_from_pb(response.job)

    def _retrying(self, attempt: Callable[[float], _R], timeout: float | None) -> _R:
        """Call `attempt(seconds_left)` again after UNAVAILABLE (idempotent requests only:
        they carry a request_id / upload_id), within one overall deadline."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        backoff = iter(self.retry_backoff)
        while True:
            try:
                return attempt(max(deadline - time.monotonic(), 0.0))
            except Unavailable:
                pause = next(backoff, None)
                if pause is None or deadline - time.monotonic() <= pause:
                    raise
                time.sleep(pause)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's gRPC health status for `service` ("" for the whole server):
        SERVING, NOT_SERVING, or SERVICE_UNKNOWN."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """What the server serves (base model, task family, version), the limits and quotas
        a caller must respect, how it authenticates and which optional features are on.
        Any authenticated caller may ask."""
        request = server_info_pb2.GetServerInfoRequest()
        return server_info_from_pb(self._call(self._server_info.GetServerInfo, request, timeout))

    def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        request = training_pb2.GetJobRequest(namespace=self.namespace, job_id=job_id)
        return job_from_pb(self._call(self._training.GetJob, request, timeout).job)

    def list_jobs(
        self,
        *,
        states: Iterable[str] | str | None = None,
        adapter: str | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[Job]:
        """Jobs, newest first, optionally only those in `states` or for `adapter`.

        Pages are fetched lazily as the iterator advances.
        """
        if isinstance(states, str):
            states = [states]
        request = training_pb2.ListJobsRequest(
            namespace=self.namespace,
            states=[state_to_pb(s) for s in states or ()],
            adapter_name=adapter or "",
            page_size=page_size or 0,
        )
        return self._pages(self._training.ListJobs, request, "jobs", job_from_pb, timeout)

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        request = training_pb2.CancelJobRequest(namespace=self.namespace, job_id=job_id)
        return job_from_pb(self._call(self._training.CancelJob, request, timeout).job)

    def wait(
        self,
        job_or_id: Job | str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll the job until it is SUCCEEDED, FAILED or CANCELLED and return it.

        `on_update(job)` is called whenever its state or step changes (and on the first
        poll). Raises `TimeoutError` when `timeout` seconds pass first (None: no limit).
        A FAILED job is returned, not raised; check `job.state`.
        """
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str, int] | None = None
        while True:
            job = self.get_job(job_id)
            if (job.state, job.step) != seen:
                seen = (job.state, job.step)
                if on_update is not None:
                    on_update(job)
            if job.done:
                return job
            pause = poll_interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"job {job_id} still {job.state} after {timeout:g}s "
                        f"(step {job.step}/{job.total_steps})"
                    )
                pause = min(pause, remaining)
            time.sleep(pause)

    def watch_job(
        self,
        job_or_id: Job | str,
        *,
        after_sequence: int = 0,
        reconnect: bool = True,
        timeout: float | None = None,
    ) -> Iterator[JobEvent]:
        """The job's events in order (state changes, progress, evaluations, checkpoints,
        warnings, errors): every event after `after_sequence`, then live ones until the job
        ends. When the connection drops (UNAVAILABLE) the stream is reopened from the last
        event received, so no event is missed or repeated. `timeout`: a deadline for the
        whole watch (None: none). Closing the iterator cancels the call."""
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        after = after_sequence
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = iter(self.retry_backoff * 4)  # reconnects in a row without an event
        while True:
            request = training_pb2.WatchJobRequest(
                namespace=self.namespace, job_id=job_id, after_sequence=after
            )
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            call = self._training.WatchJob(request, timeout=left, metadata=self._metadata or None)
            try:
                for response in call:
                    event = job_event_from_pb(response.event)
                    after = event.sequence
                    backoff = iter(self.retry_backoff * 4)  # progress: the budget starts over
                    yield event
                return
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                pause = next(backoff, None) if reconnect and isinstance(error, Unavailable) else None
                if pause is None or (deadline is not None and deadline - time.monotonic() <= pause):
                    raise error from err
                time.sleep(pause)
            finally:
                call.cancel()

    # --- datasets ---------------------------------------------------------------------

    def upload_dataset(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        task: str = "classification",
        format: str | None = None,
        display_name: str | None = None,
        text_field: str = "",
        label_field: str = "",
        upload_id: str | None = None,
        chunk_size: int = 1 << 20,
        timeout: float | None = None,
    ) -> Dataset:
        """Upload a JSONL or CSV file (a path, or the bytes) once; train from its id.

        The server checks size and SHA-256 and parses every row before storing it; the
        dataset's `report` says what it found. `format` defaults from the file suffix.
        When the connection drops (UNAVAILABLE) the upload is sent again with the same
        `upload_id`: the server keeps what it received and skips the bytes it has.
        """
        if isinstance(source, bytes):
            data, name = source, "upload"
        else:
            path = Path(source)
            data, name = path.read_bytes(), path.name
        fmt = (format or Path(name).suffix.lstrip(".")).lower()
        fmt = {"json": "jsonl", "ndjson": "jsonl"}.get(fmt, fmt)
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"cannot tell the format of {name!r}: pass format='jsonl' or 'csv'")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        header = datasets_pb2.DatasetUploadHeader(
            namespace=self.namespace,
            display_name=name if display_name is None else display_name,
            task=task_to_pb(task),
            format=datasets_pb2.DatasetFormat.Value(f"DATASET_FORMAT_{fmt.upper()}"),
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            upload_id=upload_id or uuid.uuid4().hex,
            text_field=text_field,
            label_field=label_field,
        )

        def messages() -> Iterator[datasets_pb2.UploadDatasetRequest]:
            yield datasets_pb2.UploadDatasetRequest(header=header)
            for offset in range(0, len(data), chunk_size):
                yield datasets_pb2.UploadDatasetRequest(
                    chunk=datasets_pb2.DatasetChunk(offset=offset, data=data[offset : offset + chunk_size])
                )

        response = self._retrying(lambda t: self._call(self._datasets.UploadDataset, messages(), t), timeout)
        return dataset_from_pb(response.dataset)

    def get_dataset(self, dataset_id: str, *, timeout: float | None = None) -> Dataset:
        request = datasets_pb2.GetDatasetRequest(namespace=self.namespace, dataset_id=dataset_id)
        return dataset_from_pb(self._call(self._datasets.GetDataset, request, timeout).dataset)

    def list_datasets(
        self, *, page_size: int | None = None, timeout: float | None = None
    ) -> Iterator[Dataset]:
        """Datasets, newest first; pages are fetched lazily."""
        request = datasets_pb2.ListDatasetsRequest(namespace=self.namespace, page_size=page_size or 0)
        return self._pages(self._datasets.ListDatasets, request, "datasets", dataset_from_pb, timeout)

    def delete_dataset(self, dataset_id: str, *, timeout: float | None = None) -> None:
        request = datasets_pb2.DeleteDatasetRequest(namespace=self.namespace, dataset_id=dataset_id)
        self._call(self._datasets.DeleteDataset, request, timeout)

    def list_uploads(self, *, page_size: int | None = None, timeout: float | None = None) -> Iterator[Upload]:
        """Unfinished uploads the server holds for this namespace (by upload_id); pages
        are fetched lazily."""
        request = datasets_pb2.ListUploadsRequest(namespace=self.namespace, page_size=page_size or 0)
        return self._pages(self._datasets.ListUploads, request, "uploads", upload_from_pb, timeout)

    def discard_upload(self, upload_id: str, *, timeout: float | None = None) -> None:
        """Forget an unfinished upload and the bytes received (NotFound when none)."""
        request = datasets_pb2.DeleteUploadRequest(namespace=self.namespace, upload_id=upload_id)
        self._call(self._datasets.DeleteUpload, request, timeout)

    def validate_dataset(
        self,
        dataset: str | Dataset | None = None,
        examples: Iterable[ExampleLike] = (),
        *,
        task: str = "classification",
        validation_dataset: str | Dataset | None = None,
        validation: Iterable[ExampleLike] | None = None,
        validation_fraction: float | None = None,
        max_seq_length: int | None = None,
        timeout: float | None = None,
    ) -> DataReport:
        """The checks Train runs, without a job: the data report (hard problems are in
        `report.errors`, and `report.ok` is False)."""
        request = datasets_pb2.ValidateDatasetRequest(
            namespace=self.namespace,
            task=task_to_pb(task),
            dataset_id=_dataset_id(dataset),
            training_examples=_examples_pb(examples, "examples"),
            validation_dataset_id=_dataset_id(validation_dataset),
        )
        if validation is not None:
            request.validation_examples.extend(_examples_pb(validation, "validation"))
        if validation_fraction is not None:
            request.validation_fraction = validation_fraction
        if max_seq_length is not None:
            request.max_seq_length = max_seq_length
        return data_report_from_pb(self._call(self._datasets.ValidateDataset, request, timeout).report)

    # --- inference --------------------------------------------------------------------

    def predict(
        self,
        adapter: str | None,
        texts: Sequence[str] | str,
        *,
        probabilities: bool = False,
        confidence: float | None = None,
        conformal_score: str = "lac",
        conformal_mode: str = "auto",
        uncertainty: bool = False,
        timeout: float | None = None,
    ) -> list[Classification]:
        """Classify `texts` with `adapter` ("name", "name@version", or None for the base model).

        `confidence` (e.g. 0.9): also return each text's conformal prediction set, which
        holds the true label with at least that probability; `conformal_score` "lac" or
        "aps", `conformal_mode` "auto", "marginal" or "mondrian" (per-label coverage).
        `uncertainty`: also return `abstain` (with `abstain_reason`), `out_of_domain` and
        `ood_score`, from thresholds the adapter fitted on its validation split."""
        if isinstance(texts, str):
            texts = [texts]
        request = inference_pb2.PredictRequest(
            namespace=self.namespace,
            adapter=adapter or "",
            inputs=list(texts),
            return_probabilities=probabilities,
            return_uncertainty=uncertainty,
            conformal_score=_enum(inference_pb2.ConformalScore, "CONFORMAL_SCORE_", conformal_score),
            conformal_mode=_enum(inference_pb2.ConformalMode, "CONFORMAL_MODE_", conformal_mode, "auto"),
        )
        if confidence is not None:
            request.confidence_level = confidence
        response = self._call(self._inference.Predict, request, timeout)
        mode = ""
        if confidence is not None and response.conformal_mode:
            mode = (
                inference_pb2.ConformalMode.Name(response.conformal_mode)
                .removeprefix("CONFORMAL_MODE_")
                .lower()
            )
        return [
            prediction_from_pb(p, conformal_mode=mode, uncertainty=uncertainty) for p in response.predictions
        ]

    # --- generation (causal LM) ------------------------------------------------------

    def _generation_params(self, **params: Any) -> inference_pb2.GenerationParams:
        gp = inference_pb2.GenerationParams(raw_prompt=bool(params.pop("raw_prompt", False)))
        stop = params.pop("stop", None)
        if stop:
            gp.stop.extend([stop] if isinstance(stop, str) else list(stop))
        for name, value in params.items():
            if value is not None:
                setattr(gp, name, value)
        return gp

    def generate(
        self,
        adapter: str | None,
        prompts: Sequence[str] | str,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        raw_prompt: bool = False,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        timeout: float | None = None,
    ) -> Generation | list[Generation]:
        """Complete `prompts` with `adapter` (None: the base model) on a causal-LM server.
        One prompt (a str) gives one Generation, a list gives a list. Unset options take the
        server's defaults (greedy; max_new_tokens_default tokens). `logprobs`: each token's
        log-probability in `Generation.logprobs`; `top_logprobs`: also the k most likely."""
        single = isinstance(prompts, str)
        request = inference_pb2.PredictRequest(
            namespace=self.namespace,
            adapter=adapter or "",
            inputs=[prompts] if single else list(prompts),
            generation=self._generation_params(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                stop=stop,
                seed=seed,
                raw_prompt=raw_prompt,
                logprobs=logprobs or None,
                top_logprobs=top_logprobs,
            ),
        )
        response = self._call(self._inference.Predict, request, timeout)
        out = [generation_from_pb(p) for p in response.predictions]
        return out[0] if single else out

    def chat(
        self,
        adapter: str | None,
        messages: Sequence[Mapping[str, str] | tuple[str, str]],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        timeout: float | None = None,
    ) -> Generation:
        """The next assistant turn of a conversation: `messages` as {"role", "content"} dicts
        or (role, content) pairs, roles "system", "user", "assistant", rendered through the
        base model's chat template."""
        request = inference_pb2.PredictRequest(
            namespace=self.namespace,
            adapter=adapter or "",
            messages=_chat_messages_pb(messages),
            generation=self._generation_params(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                stop=stop,
                seed=seed,
                logprobs=logprobs or None,
                top_logprobs=top_logprobs,
            ),
        )
        response = self._call(self._inference.Predict, request, timeout)
        return generation_from_pb(response.predictions[0])

    def stream(
        self,
        adapter: str | None,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str] | tuple[str, str]] | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        raw_prompt: bool = False,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        timeout: float | None = None,
    ) -> GenerationStream:
        """Stream one completion of `prompt` (or of the conversation in `messages`): iterate
        the result for text deltas as they are produced; afterwards `.final` holds the whole
        Generation. `.cancel()` (or leaving a `with` block early) stops the generation on the
        server."""
        request = inference_pb2.PredictStreamRequest(
            namespace=self.namespace,
            adapter=adapter or "",
            input=prompt or "",
            messages=_chat_messages_pb(messages or ()),
            generation=self._generation_params(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                stop=stop,
                seed=seed,
                raw_prompt=raw_prompt,
                logprobs=logprobs or None,
                top_logprobs=top_logprobs,
            ),
        )
        call = self._inference.PredictStream(
            request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata or None
        )
        return GenerationStream(call)

    # --- adapters ---------------------------------------------------------------------

    def list_adapters(
        self, page_size: int | None = None, *, timeout: float | None = None
    ) -> Iterator[Adapter]:
        """Adapters by name; pages are fetched lazily."""
        request = adapters_pb2.ListAdaptersRequest(namespace=self.namespace, page_size=page_size or 0)
        return self._pages(self._adapters.ListAdapters, request, "adapters", adapter_from_pb, timeout)

    def get_adapter(self, name: str, *, timeout: float | None = None) -> Adapter:
        request = adapters_pb2.GetAdapterRequest(namespace=self.namespace, name=name)
        return adapter_from_pb(self._call(self._adapters.GetAdapter, request, timeout).adapter)

    def delete_adapter(self, adapter: str, *, timeout: float | None = None) -> list[int]:
        """Delete "name@version", or every version of "name"; returns the deleted versions."""
        request = adapters_pb2.DeleteAdapterRequest(namespace=self.namespace, adapter=adapter)
        response = self._call(self._adapters.DeleteAdapter, request, timeout)
        return list(response.deleted_versions)

    # --- aliases ----------------------------------------------------------------------

    def set_alias(
        self, adapter: str, alias: str, *, reason: str = "", timeout: float | None = None
    ) -> tuple[AliasMove, Adapter]:
        """Point `alias` of an adapter at "name@version" (or "name@other-alias"); returns the
        move and the adapter after it. "name@alias" then works wherever "name@version" does."""
        request = adapters_pb2.SetAliasRequest(
            namespace=self.namespace, adapter=adapter, alias=alias, reason=reason
        )
        r = self._call(self._adapters.SetAlias, request, timeout)
        return move_from_pb(r.move), adapter_from_pb(r.adapter)

    def delete_alias(
        self, name: str, alias: str, *, reason: str = "", timeout: float | None = None
    ) -> tuple[AliasMove, Adapter]:
        """Remove an alias ("default" cannot be removed)."""
        request = adapters_pb2.DeleteAliasRequest(
            namespace=self.namespace, name=name, alias=alias, reason=reason
        )
        r = self._call(self._adapters.DeleteAlias, request, timeout)
        return move_from_pb(r.move), adapter_from_pb(r.adapter)

    def promote_version(
        self, adapter: str, *, reason: str = "", timeout: float | None = None
    ) -> tuple[AliasMove, Adapter]:
        """Move `default` (what the bare name serves) to "name@version"."""
        request = adapters_pb2.PromoteVersionRequest(namespace=self.namespace, adapter=adapter, reason=reason)
        r = self._call(self._adapters.PromoteVersion, request, timeout)
        return move_from_pb(r.move), adapter_from_pb(r.adapter)

    def rollback(
        self, name: str, *, alias: str = "", reason: str = "", timeout: float | None = None
    ) -> tuple[AliasMove, Adapter]:
        """Move `default` (or `alias`) back to the version it pointed at before its last move."""
        request = adapters_pb2.RollbackRequest(
            namespace=self.namespace, name=name, alias=alias, reason=reason
        )
        r = self._call(self._adapters.Rollback, request, timeout)
        return move_from_pb(r.move), adapter_from_pb(r.adapter)

    def alias_history(
        self, name: str, *, alias: str = "", page_size: int | None = None, timeout: float | None = None
    ) -> Iterator[AliasMove]:
        """An adapter's alias moves, newest first (of one alias, when given); lazily paged."""
        request = adapters_pb2.ListAliasHistoryRequest(
            namespace=self.namespace, name=name, alias=alias, page_size=page_size or 0
        )
        return self._pages(self._adapters.ListAliasHistory, request, "moves", move_from_pb, timeout)

    def load_adapter(self, adapter: str, *, pin: bool = False, timeout: float | None = None) -> LoadedAdapter:
        """Make "name" (latest) or "name@version" resident on the server that answers (warm-up);
        with pin=True it is never evicted there, and a pinned bare name follows new versions."""
        request = adapters_pb2.LoadAdapterRequest(namespace=self.namespace, adapter=adapter, pin=pin)
        r = self._call(self._adapters.LoadAdapter, request, timeout)
        return LoadedAdapter(r.adapter_name, r.adapter_version, r.pinned, r.size_bytes, r.load_seconds)

    def unload_adapter(self, adapter: str, *, timeout: float | None = None) -> list[int]:
        """Unpin and release "name" (all resident versions) or "name@version" on the server that
        answers; returns the versions released. The adapter stays registered."""
        request = adapters_pb2.UnloadAdapterRequest(namespace=self.namespace, adapter=adapter)
        return list(self._call(self._adapters.UnloadAdapter, request, timeout).unloaded_versions)

    def export_adapter(
        self, adapter: str, directory: str | os.PathLike[str], *, timeout: float | None = None
    ) -> ExportedAdapter:
        """Download "name" (latest) or "name@version" into `directory` (created if absent):
        adapter_config.json + adapter_model.safetensors (plain `peft.PeftModel.from_pretrained`
        loads them), head.safetensors for a classifier, tuneserve.json and a README.md model
        card. The archive's size and SHA-256 are checked before anything is written."""
        request = adapters_pb2.ExportAdapterRequest(namespace=self.namespace, adapter=adapter)
        call = self._adapters.ExportAdapter(
            request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata or None
        )
        header = None
        parts: list[bytes] = []
        try:
            for response in call:
                if response.WhichOneof("part") == "header":
                    header = response.header
                else:
                    parts.append(response.chunk.data)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()
        data = b"".join(parts)
        if (
            header is None
            or len(data) != header.size_bytes
            or hashlib.sha256(data).hexdigest() != header.sha256
        ):
            raise ValueError(f"the export of {adapter!r} arrived incomplete or damaged; try again")
        files = unpack_to(data, directory)
        return ExportedAdapter(
            header.adapter_name,
            header.adapter_version,
            str(directory),
            files,
            header.size_bytes,
            header.sha256,
        )

    def import_adapter(
        self,
        source: str | os.PathLike[str] | bytes,
        name: str,
        *,
        labels: Sequence[str] | None = None,
        head: str | os.PathLike[str] | None = None,
        temperature: float | None = None,
        chunk_size: int = 1 << 20,
        timeout: float | None = None,
    ) -> tuple[Adapter, int]:
        """Register a new version of `name` from a peft adapter: a directory (an export, or a
        plain `save_pretrained` one: its top-level files are sent), a .tar.gz file, or the
        archive's bytes. A classifier also needs its head (`head`: a safetensors file with
        `weight` (labels, hidden) and `bias` (labels), unless the directory has
        head.safetensors) and its `labels` in the head's output order (unless the directory's
        tuneserve.json has them). Returns the adapter and the new version number."""
        if isinstance(source, bytes):
            data = source
        elif Path(source).is_dir():
            data = pack_directory(source, {HEAD_FILE: head} if head is not None else {})
        else:
            data = Path(source).read_bytes()
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        header = adapters_pb2.ImportAdapterHeader(
            namespace=self.namespace,
            name=name,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            labels=list(labels or ()),
            temperature=temperature or 0.0,
        )

        def messages() -> Iterator[adapters_pb2.ImportAdapterRequest]:
            yield adapters_pb2.ImportAdapterRequest(header=header)
            for offset in range(0, len(data), chunk_size):
                yield adapters_pb2.ImportAdapterRequest(
                    chunk=adapters_pb2.AdapterArchiveChunk(
                        offset=offset, data=data[offset : offset + chunk_size]
                    )
                )

        response = self._call(self._adapters.ImportAdapter, messages(), timeout)
        return adapter_from_pb(response.adapter), response.version

    def _pages(
        self,
        method: Callable[..., Any],
        request: Any,
        items: str,
        convert: Callable[[Any], _R],
        timeout: float | None,
    ) -> Iterator[_R]:
        def generate() -> Iterator[_R]:
            while True:
                response = self._call(method, request, timeout)
                for item in getattr(response, items):
                    yield convert(item)
                if not response.next_page_token:
                    return
                request.page_token = response.next_page_token

        return generate()


Client.train.__doc__ = (Client.train.__doc__ or "").rstrip() + "\n" + hyperparameters_doc() + "\n"


def _chat_messages_pb(
    messages: Iterable[Mapping[str, str] | tuple[str, str]],
) -> list[common_pb2.ChatMessage]:
    out = []
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else m
        out.append(common_pb2.ChatMessage(role=role, content=content))
    return out


def _enum(enum: Any, prefix: str, name: str, unspecified: str = "") -> int:
    """An enum value by its short lower-case name ("aps" -> CONFORMAL_SCORE_APS); the
    `unspecified` name means the server's default."""
    if name == unspecified:
        return 0
    try:
        return enum.Value(prefix + name.upper())
    except ValueError:
        known = [
            n.removeprefix(prefix).lower()
            for n in enum.DESCRIPTOR.values_by_name
            if not n.endswith("UNSPECIFIED")
        ]
        raise ValueError(
            f"unknown {prefix.lower().rstrip('_')} {name!r}; one of {', '.join(known)}"
        ) from None
