"""The one check that a call needing the base model (its task, tokenizer, limits) waits
until the engine has loaded it."""

from __future__ import annotations

from tuneserve_server.domain.errors import NotReady
from tuneserve_server.engine.inference import InferenceEngine


def require_ready(engine: InferenceEngine) -> None:
    if not engine.ready:
        raise NotReady("the base model is still loading; retry shortly")
