"""OpenAI-compatible HTTP endpoints (Starlette on uvicorn) in the API process, on the same
services, engine and adapters as gRPC: no second model copy, torch work only through the
engine's scheduler (never on this event loop).

* `GET /v1/models`, `GET /v1/models/{id}`: the caller's adapters (each name, name@alias and
  name@version) and the served base model.
* `POST /v1/chat/completions`, `POST /v1/completions` (causal LM), with `stream: true` as
  server-sent events; `model` is an adapter name, name@version, or the base model's id.
* `POST /v1/classifications` (classification servers): `{"model", "input": [texts]}`.

Authentication is the gRPC one (services/auth.py): `Authorization: Bearer <API key or JWT>`,
the same principal, tenant scoping and roles (every endpoint needs `predict`); the caller
acts in its own tenant. Errors are OpenAI-style bodies from http_errors.py's table."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tuneserve_server.api.http_errors import error_body, http_error
from tuneserve_server.config import Settings
from tuneserve_server.domain.aliases import AliasRecord
from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest, NotFound
from tuneserve_server.domain.jobs import ChatTurn, TaskType
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.domain.tenancy import Principal, Role
from tuneserve_server.engine.generation import Delta, FinishReason, GenerationResult, TokenLogprob
from tuneserve_server.services import Services
from tuneserve_server.services.auth import Authenticator, require_role, resolve_namespace
from tuneserve_server.services.sampling import SamplingRequest, sampling_params

log = structlog.get_logger("tuneserve.http")

FINISH = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}
# OpenAI's names for the settings the services know by the gRPC names.
_HTTP_NAMES = {"max_new_tokens": "max_tokens"}


class _TooLarge(Exception):
    pass


def _http_field(name: str) -> str:
    return _HTTP_NAMES.get(name, name)


def _bad(param: str, what: str) -> InvalidRequest:
    return InvalidRequest.field(param, what)


def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    """A body field of one of `kinds` (bool is not an int here), or `default` when absent/null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise _bad(name, f"must be {' or '.join(k.__name__ for k in kinds)}")
    if not isinstance(value, kinds):
        raise _bad(name, f"must be {' or '.join(k.__name__ for k in kinds)}")
    return value


def _token_bytes(text: str) -> list[int] | None:
    return None if "\ufffd" in text else list(text.encode())


def _chat_logprobs(lps: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": _token_bytes(lp.token),
                "top_logprobs": [{"token": s, "logprob": v, "bytes": _token_bytes(s)} for _, s, v in lp.top],
            }
            for lp in lps
        ],
        "refusal": None,
    }


def _completion_logprobs(lps: tuple[TokenLogprob, ...], offset: int = 0) -> dict[str, Any]:
    offsets, at = [], offset
    for lp in lps:
        offsets.append(at)
        at += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{s: v for _, s, v in lp.top} for lp in lps],
        "text_offset": offsets,
    }


def _usage(results: list[GenerationResult]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _model_name(record: AdapterVersionRecord | None, base: str) -> str:
    return base if record is None else f"{record.name}@{record.version}"


class OpenAIApp:
    """The Starlette application over the services."""

    def __init__(self, settings: Settings, services: Services, authenticator: Authenticator) -> None:
        self.settings = settings
        self.services = services
        self.auth = authenticator
        # JSON bodies hold texts: room for every input at its longest, escaped (\uXXXX).
        self.max_body_bytes = 6 * settings.max_predict_inputs * settings.max_text_chars + (1 << 20)
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/classifications", self.classifications, methods=["POST"]),
            ]
        )

    # ------------------------------------------------------------------ plumbing
    async def _principal(self, request: Request, what: str) -> tuple[Principal, str]:
        header = request.headers.get("authorization")
        metadata = [("authorization", header)] if header is not None else []
        principal = await self.auth.authenticate_async(metadata, {})
        require_role(principal, Role.PREDICT, what)
        structlog.contextvars.bind_contextvars(tenant=principal.tenant, key_id=principal.key_id)
        return principal, resolve_namespace(principal, "")

    async def _body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _TooLarge()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge()
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        return body

    def _error(self, exc: BaseException) -> JSONResponse:
        if isinstance(exc, _TooLarge):
            message = f"the request body is larger than {self.max_body_bytes} bytes"
            return JSONResponse(error_body(413, message, "invalid_request_error", "request_too_large"), 413)
        status, body, headers = http_error(exc)
        return JSONResponse(body, status, headers=headers)

    async def _handle(self, request: Request, handler) -> Response:
        """Authenticate, run, and turn any exception into an OpenAI-style error response."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id, http=request.url.path)
        start = time.perf_counter()
        try:
            _, namespace = await self._principal(request, f"{request.method} {request.url.path}")
            response = await handler(request, namespace)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = self._error(exc)
        response.headers["x-request-id"] = request_id
        log.info(
            "http request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            ms=round((time.perf_counter() - start) * 1000, 1),
        )
        structlog.contextvars.unbind_contextvars("request_id", "http", "tenant", "key_id")
        return response

    def _base(self) -> str:
        return self.services.server_info.info().model.base_model  # NotReady until loaded

    def _ref(self, namespace: str, model: Any) -> AdapterRef | None:
        if not isinstance(model, str) or not model:
            raise _bad("model", "is required: an adapter name, name@version, or the base model's id")
        if model == self._base():
            return None
        return AdapterRef.parse(namespace, model, field="model")

    async def _resolve(self, ref: AdapterRef | None) -> None:
        """A model that is not the caller's (or does not exist) is 404 on `model`."""
        if ref is None:
            return
        try:
            await self.services.prediction.engine.resolve(ref)
        except NotFound as exc:
            raise _ModelNotFound(
                f"model {ref.name if ref.version is None else f'{ref.name}@{ref.version}'!r} "
                f"does not exist or is not yours ({exc.message})"
            ) from None

    def _sampling(self, body: dict, *, raw_prompt: bool, logprobs: bool, top_logprobs: int | None):
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise _bad("stop", "must be a string or a list of strings")
        max_tokens = _get(body, "max_completion_tokens", (int,))
        if max_tokens is None:
            max_tokens = _get(body, "max_tokens", (int,))
        n = _get(body, "n", (int,), 1)
        if n != 1:
            raise _bad("n", "only n = 1 is supported (send several requests)")
        limits = self.services.prediction.limits
        return sampling_params(
            SamplingRequest(
                max_new_tokens=max_tokens,
                temperature=_get(body, "temperature", (int, float)),
                top_p=_get(body, "top_p", (int, float)),
                top_k=_get(body, "top_k", (int,)),  # not OpenAI's; vLLM takes it too
                stop=tuple(stop or ()),
                seed=_get(body, "seed", (int,)),
                raw_prompt=raw_prompt,
                logprobs=logprobs,
                top_logprobs=top_logprobs,
            ),
            default_max_new_tokens=limits.max_new_tokens_default,
            max_new_tokens_limit=limits.max_new_tokens_limit,
            field=_http_field,
        )

    # ------------------------------------------------------------------ /v1/models
    def _model_objects(
        self, records: list[AdapterVersionRecord], aliases: list[AliasRecord], base: str
    ) -> list[dict[str, Any]]:
        """The base, then per adapter: its bare name (what alias `default` points at), each
        `name@alias` and each `name@version`."""
        out = [{"id": base, "object": "model", "created": 0, "owned_by": "tuneserve", "task": "base"}]
        by_name: dict[str, list[AdapterVersionRecord]] = {}
        for rec in records:
            by_name.setdefault(rec.name, []).append(rec)
        pointers: dict[str, dict[str, int]] = {}
        for a in aliases:
            if a.version:
                pointers.setdefault(a.name, {})[a.alias] = a.version
        for name in sorted(by_name):
            versions = sorted(by_name[name], key=lambda r: r.version)
            by_version = {r.version: r for r in versions}
            named = pointers.get(name, {})
            served = by_version.get(named.get("default", 0), versions[-1])
            out.append(_model_entry(name, served))
            out.extend(
                _model_entry(f"{name}@{alias}", by_version[v])
                for alias, v in sorted(named.items())
                if alias != "default" and v in by_version
            )
            out.extend(_model_entry(f"{name}@{r.version}", r) for r in versions)
        return out

    async def _models(self, namespace: str) -> list[dict[str, Any]]:
        records = await self.services.adapters.versions(namespace)
        aliases = await self.services.adapters.aliases(namespace)
        return self._model_objects(records, aliases, self._base())

    async def list_models(self, request: Request) -> Response:
        async def run(_: Request, namespace: str) -> Response:
            return JSONResponse({"object": "list", "data": await self._models(namespace)})

        return await self._handle(request, run)

    async def get_model(self, request: Request) -> Response:
        async def run(_: Request, namespace: str) -> Response:
            wanted = request.path_params["model"]
            for item in await self._models(namespace):
                if item["id"] == wanted:
                    return JSONResponse(item)
            raise _ModelNotFound(f"model {wanted!r} does not exist or is not yours")

        return await self._handle(request, run)

    # ------------------------------------------------------------------ chat
    @staticmethod
    def _messages(body: dict) -> tuple[ChatTurn, ...]:
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise _bad("messages", "must be a non-empty list of {role, content} objects")
        turns = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise _bad(f"messages[{i}]", "must be an object with role and content")
            role, content = m.get("role"), m.get("content")
            if role == "developer":  # OpenAI's newer name for the system turn
                role = "system"
            if isinstance(content, list):  # content parts: text only
                texts = []
                for j, part in enumerate(content):
                    if not (
                        isinstance(part, dict)
                        and part.get("type") == "text"
                        and isinstance(part.get("text"), str)
                    ):
                        raise _bad(f"messages[{i}].content[{j}]", "only text parts are supported")
                    texts.append(part["text"])
                content = "".join(texts)
            if not isinstance(role, str):
                raise _bad(f"messages[{i}].role", "must be a string")
            if not isinstance(content, str):
                raise _bad(f"messages[{i}].content", "must be a string or a list of text parts")
            turns.append(ChatTurn(role, content))
        return tuple(turns)

    async def chat_completions(self, request: Request) -> Response:
        async def run(_: Request, namespace: str) -> Response:
            body = await self._body(request)
            ref = self._ref(namespace, body.get("model"))
            messages = self._messages(body)
            logprobs = bool(_get(body, "logprobs", (bool,), False))
            params = self._sampling(
                body, raw_prompt=False, logprobs=logprobs, top_logprobs=_get(body, "top_logprobs", (int,))
            )
            await self._resolve(ref)
            base = self._base()
            cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            prediction = self.services.prediction
            if _get(body, "stream", (bool,), False):
                record, stream = await prediction.open_stream(ref, "", lambda: params, messages)
                model = _model_name(record, base)
                options = _get(body, "stream_options", (dict,), {})

                def chunk(delta: dict, finish: str | None = None, lps: tuple = ()) -> dict:
                    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                    if logprobs and lps:
                        choice["logprobs"] = _chat_logprobs(lps)
                    return {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": None,
                        "choices": [choice],
                    }

                def events(first: bool, event: Delta | GenerationResult) -> list[dict]:
                    out = [chunk({"role": "assistant", "content": ""})] if first else []
                    if isinstance(event, GenerationResult):
                        out.append(chunk({}, FINISH[event.finish_reason]))
                        if options.get("include_usage"):
                            out.append(
                                {
                                    "id": cid,
                                    "object": "chat.completion.chunk",
                                    "created": created,
                                    "model": model,
                                    "choices": [],
                                    "usage": _usage([event]),
                                }
                            )
                    else:
                        out.append(chunk({"content": event.text}, None, event.logprobs))
                    return out

                return await _sse(stream, events)
            result = await prediction.predict(
                ref, [], generation_asked=True, sampling=lambda: params, messages=messages
            )
            (gen,) = result.results
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": _model_name(result.adapter, base),
                    "system_fingerprint": None,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": gen.text, "refusal": None},
                            "finish_reason": FINISH[gen.finish_reason],
                            "logprobs": _chat_logprobs(gen.logprobs) if logprobs else None,
                        }
                    ],
                    "usage": _usage([gen]),
                }
            )

        return await self._handle(request, run)

    # ------------------------------------------------------------------ completions
    async def completions(self, request: Request) -> Response:
        async def run(_: Request, namespace: str) -> Response:
            body = await self._body(request)
            ref = self._ref(namespace, body.get("model"))
            prompt = body.get("prompt")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise _bad("prompt", "must be a string or a non-empty list of strings")
            if _get(body, "echo", (bool,), False):
                raise _bad("echo", "is not supported")
            top = _get(body, "logprobs", (int,))
            params = self._sampling(body, raw_prompt=True, logprobs=top is not None, top_logprobs=top)
            await self._resolve(ref)
            base = self._base()
            cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
            prediction = self.services.prediction
            if _get(body, "stream", (bool,), False):
                if len(prompts) != 1:
                    raise _bad("prompt", "a streamed completion takes one prompt")
                record, stream = await prediction.open_stream(ref, prompts[0], lambda: params, (), "prompt")
                model = _model_name(record, base)
                options = _get(body, "stream_options", (dict,), {})
                sent = [0]

                def events(first: bool, event: Delta | GenerationResult) -> list[dict]:
                    def chunk(text: str, finish: str | None, lps: tuple = ()) -> dict:
                        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                        if top is not None and lps:
                            choice["logprobs"] = _completion_logprobs(lps, sent[0])
                            sent[0] += sum(len(lp.token) for lp in lps)
                        return {
                            "id": cid,
                            "object": "text_completion",
                            "created": created,
                            "model": model,
                            "choices": [choice],
                        }

                    if isinstance(event, GenerationResult):
                        out = [chunk("", FINISH[event.finish_reason])]
                        if options.get("include_usage"):
                            out.append(
                                {
                                    "id": cid,
                                    "object": "text_completion",
                                    "created": created,
                                    "model": model,
                                    "choices": [],
                                    "usage": _usage([event]),
                                }
                            )
                        return out
                    return [chunk(event.text, None, event.logprobs)]

                return await _sse(stream, events)
            result = await prediction.predict(ref, prompts, generation_asked=True, sampling=lambda: params)
            return JSONResponse(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": _model_name(result.adapter, base),
                    "system_fingerprint": None,
                    "choices": [
                        {
                            "index": i,
                            "text": r.text,
                            "finish_reason": FINISH[r.finish_reason],
                            "logprobs": _completion_logprobs(r.logprobs) if top is not None else None,
                        }
                        for i, r in enumerate(result.results)
                    ],
                    "usage": _usage(result.results),
                }
            )

        return await self._handle(request, run)

    # ------------------------------------------------------------------ classifications
    async def classifications(self, request: Request) -> Response:
        async def run(_: Request, namespace: str) -> Response:
            body = await self._body(request)
            ref = self._ref(namespace, body.get("model"))
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise _bad("input", "must be a string or a list of strings")
            engine = self.services.prediction.engine
            if getattr(engine, "task", None) is TaskType.CAUSAL_LM:
                raise FailedPrecondition(
                    f"this server serves {self._base()}, a causal-LM model; use /v1/chat/completions"
                )
            await self._resolve(ref)
            try:
                result = await self.services.prediction.predict(
                    ref, texts, generation_asked=False, sampling=lambda: None
                )
            except InvalidRequest as exc:
                raise _renamed(exc, "inputs", "input") from None
            data = []
            for i, scores in enumerate(result.scores):
                label, score = scores.top()
                data.append(
                    {
                        "index": i,
                        "label": label,
                        "score": score,
                        "probabilities": dict(zip(scores.labels, scores.probabilities, strict=True)),
                    }
                )
            return JSONResponse(
                {
                    "id": f"clf-{uuid.uuid4().hex}",
                    "object": "classification",
                    "created": int(time.time()),
                    "model": _model_name(result.adapter, self._base()),
                    "data": data,
                }
            )

        return await self._handle(request, run)


class _ModelNotFound(NotFound):
    """A `model` the caller cannot use: 404 with param `model`, code model_not_found."""

    http_param = "model"
    http_code = "model_not_found"


def _renamed(exc: InvalidRequest, old: str, new: str) -> InvalidRequest:
    from tuneserve_server.domain.errors import FieldViolation

    violations = [
        FieldViolation(new + v.field[len(old) :] if v.field.startswith(old) else v.field, v.description)
        for v in exc.violations
    ]
    message = new + exc.message[len(old) :] if exc.message.startswith(old) else exc.message
    renamed = InvalidRequest(message, violations)
    if violations:
        renamed.http_param = violations[0].field  # type: ignore[attr-defined]
    return renamed


async def _sse(stream, events) -> Response:
    """Server-sent events of one row: the first event is awaited before the response starts,
    so a request that fails at once (e.g. a prompt longer than the context) gets a proper
    error status; a failure later is an `error` event. A client that goes away cancels the
    row (the stream's cleanup)."""
    iterator = stream.events().__aiter__()
    try:
        first_event = await iterator.__anext__()
    except BaseException:
        stream.cancel()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            event, first = first_event, True
            while True:
                for item in events(first, event):
                    yield f"data: {json.dumps(item)}\n\n".encode()
                first = False
                if isinstance(event, GenerationResult):
                    break
                event = await iterator.__anext__()
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _, payload, _ = http_error(exc)
            yield f"data: {json.dumps(payload)}\n\n".encode()
        finally:
            if stream.result is None:
                stream.cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the composition root owns SIGTERM/SIGINT
    and stops this server as part of the process's drain."""

    def capture_signals(self):  # type: ignore[override]
        import contextlib

        return contextlib.nullcontext()


class OpenAIHttpServer:
    """The HTTP listener: started and stopped by app.py with the gRPC server."""

    def __init__(self, settings: Settings, services: Services, authenticator: Authenticator) -> None:
        self.settings = settings
        self.app = OpenAIApp(settings, services, authenticator)
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        s = self.settings
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, s.openai_port))
        except OSError as exc:
            sock.close()
            from tuneserve_server.config import ConfigError

            raise ConfigError(
                f"setting openai_port: cannot listen on {s.host}:{s.openai_port} ({exc.strerror})"
            ) from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=max(1, int(s.grace_s)),
            ssl_certfile=str(s.tls_cert_file) if s.tls_cert_file else None,
            ssl_keyfile=str(s.tls_key_file) if s.tls_key_file else None,
        )
        self._server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="openai-http"
        )
        while not self._server.started:
            if self._task.done():
                self._task.result()  # a failed start raises here
                raise RuntimeError("the OpenAI-compatible HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info(
            "openai-compatible http listening",
            address=f"{s.host}:{self.port}",
            tls=s.tls_cert_file is not None,
        )
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to grace_s), then close."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)


def _model_entry(model_id: str, r: AdapterVersionRecord) -> dict[str, Any]:
    """One /v1/models object: `model_id` serves version `r`."""
    return {
        "id": model_id,
        "object": "model",
        "created": int(r.created_at.timestamp()),
        "owned_by": r.namespace,
        "task": r.task.value,
        "version": r.version,
    }
