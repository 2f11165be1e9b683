"""Generation settings as a caller sends them (any transport: gRPC GenerationParams, the
OpenAI-compatible HTTP body) -> the engine's SamplingParams, with every check in one place.
A transport names the fields its own way (`field`): `generation.top_p` over gRPC, `top_p`
over HTTP; the rules and messages are the same."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from tuneserve_server.domain.errors import FieldViolation, InvalidRequest
from tuneserve_server.domain.limits import MAX_TOP_LOGPROBS
from tuneserve_server.engine.generation import SamplingParams

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class SamplingRequest:
    """What the caller asked for; None: not given (the server's default)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    raw_prompt: bool = False
    logprobs: bool = False
    top_logprobs: int | None = None


def grpc_field(name: str) -> str:
    return f"generation.{name}"


def sampling_params(
    req: SamplingRequest,
    *,
    default_max_new_tokens: int,
    max_new_tokens_limit: int,
    field: Callable[[str], str] = grpc_field,
) -> SamplingParams:
    """Check every setting; all violations at once, each named by `field(setting)`."""
    problems: list[FieldViolation] = []

    def bad(name: str, what: str) -> None:
        problems.append(FieldViolation(field(name), what))

    max_new = default_max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
    if not 1 <= max_new <= max_new_tokens_limit:
        bad("max_new_tokens", f"must be in [1, {max_new_tokens_limit}] (the server's max_new_tokens_limit)")
    temperature = 0.0 if req.temperature is None else req.temperature
    if not math.isfinite(temperature) or temperature < 0:
        bad("temperature", "must be >= 0 (0: greedy)")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        bad("top_p", "must be in (0, 1]")
    top_k = 0 if req.top_k is None else req.top_k
    if top_k < 0:
        bad("top_k", "must be >= 0 (0: all tokens)")
    stops = tuple(req.stop)
    if len(stops) > MAX_STOP_SEQUENCES:
        bad("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for i, stop in enumerate(stops):
        if not stop:
            bad(f"stop[{i}]", "must not be empty")
        elif len(stop) > MAX_STOP_CHARS:
            bad(f"stop[{i}]", f"longer than {MAX_STOP_CHARS} characters")
    top_logprobs = 0 if req.top_logprobs is None else req.top_logprobs
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        bad("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}] (the server's max_top_logprobs)")
    elif top_logprobs and not req.logprobs:
        bad("top_logprobs", "needs logprobs to be true")
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidRequest(f"{first.field}: {first.description}{more}", problems)
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=top_k,
        stop=stops,
        seed=req.seed,
        raw_prompt=req.raw_prompt,
        logprobs=req.logprobs,
        top_logprobs=top_logprobs,
    )
