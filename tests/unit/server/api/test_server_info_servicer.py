"""GetServerInfo's conversion: every domain field reaches its proto field; generation
bounds are reported only by a causal-LM server."""

from __future__ import annotations

from tuneserve.v1 import common_pb2, server_info_pb2
from tuneserve_server.api.auth_interceptor import required_role
from tuneserve_server.api.server_info_servicer import server_info_pb
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.server_info import (
    AuthSummary,
    Features,
    RequestLimits,
    ServedModel,
    ServerInfo,
)
from tuneserve_server.domain.tenancy import Quotas, Role

LIMITS = RequestLimits(
    max_predict_inputs=3,
    max_text_chars=50,
    max_train_examples=1000,
    max_lora_rank=8,
    max_dataset_bytes=12345,
    max_request_bytes=64 * 1024 * 1024,
    max_new_tokens_default=16,
    max_new_tokens_limit=64,
)
QUOTAS = Quotas(
    active_jobs=1,
    dataset_bytes=2,
    upload_bytes=3,
    adapter_versions=4,
    pinned_adapters=5,
    queued_predict_rows=6,
)


def _info(model: ServedModel, auth: AuthSummary) -> ServerInfo:
    return ServerInfo("9.9.9", model, LIMITS, auth, Features.of(model), QUOTAS)


def test_a_classification_server_reports_its_limits_quotas_auth_and_features():
    model = ServedModel("org/encoder", TaskType.CLASSIFICATION, 512, 128, chat_template=False)
    pb = server_info_pb(_info(model, AuthSummary("api_key", True, False, True)))
    assert (pb.base_model, pb.task, pb.version) == (
        "org/encoder",
        common_pb2.TASK_TYPE_CLASSIFICATION,
        "9.9.9",
    )
    lim = pb.limits
    assert (lim.max_predict_inputs, lim.max_text_chars, lim.max_train_examples, lim.max_lora_rank) == (
        3,
        50,
        1000,
        8,
    )
    assert (lim.max_dataset_bytes, lim.max_request_bytes) == (12345, 64 * 1024 * 1024)
    assert (lim.max_sequence_tokens, lim.max_input_tokens) == (512, 128)
    assert (lim.max_new_tokens_default, lim.max_new_tokens_limit) == (0, 0)  # no generation here
    assert lim.max_top_logprobs == 0
    assert pb.auth == server_info_pb2.ServerAuth(
        mode=server_info_pb2.AUTH_MODE_API_KEY,
        jwt=True,
        client_certificates=False,
        reflection_requires_auth=True,
    )
    f = pb.features
    assert f.probabilities and f.calibration and f.prediction_sets and f.uncertainty
    assert not (f.generation or f.streaming_generation or f.chat_template)
    q = pb.quotas
    assert (q.active_jobs, q.dataset_bytes, q.upload_bytes) == (1, 2, 3)
    assert (q.adapter_versions, q.pinned_adapters, q.queued_predict_rows) == (4, 5, 6)


def test_a_causal_lm_server_reports_generation_bounds_and_streaming():
    model = ServedModel("org/lm", TaskType.CAUSAL_LM, 2048, 0, chat_template=True)
    pb = server_info_pb(_info(model, AuthSummary("none", False, False, False)))
    assert pb.task == common_pb2.TASK_TYPE_CAUSAL_LM
    assert pb.auth.mode == server_info_pb2.AUTH_MODE_NONE
    assert (pb.limits.max_new_tokens_default, pb.limits.max_new_tokens_limit) == (16, 64)
    assert (pb.limits.max_sequence_tokens, pb.limits.max_input_tokens) == (2048, 0)
    assert pb.limits.max_top_logprobs == 20  # domain/limits.MAX_TOP_LOGPROBS
    f = pb.features
    assert f.generation and f.streaming_generation and f.chat_template
    assert not (f.probabilities or f.prediction_sets or f.uncertainty or f.calibration)


def test_any_authenticated_caller_may_ask():
    assert required_role("/tuneserve.v1.ServerInfoService/GetServerInfo") is Role.PREDICT
