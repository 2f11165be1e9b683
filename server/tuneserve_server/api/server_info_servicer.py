"""ServerInfoService: what this server serves, its limits, authentication and features."""

from __future__ import annotations

from tuneserve.v1 import common_pb2, server_info_pb2, server_info_pb2_grpc
from tuneserve_server.api.rpc import rpc
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.limits import MAX_TOP_LOGPROBS
from tuneserve_server.domain.server_info import ServerInfo
from tuneserve_server.services.server_info import ServerInfoService

_TASK = {
    TaskType.CLASSIFICATION: common_pb2.TASK_TYPE_CLASSIFICATION,
    TaskType.CAUSAL_LM: common_pb2.TASK_TYPE_CAUSAL_LM,
}
_AUTH = {"none": server_info_pb2.AUTH_MODE_NONE, "api_key": server_info_pb2.AUTH_MODE_API_KEY}


def server_info_pb(info: ServerInfo) -> server_info_pb2.GetServerInfoResponse:
    m, lim, auth, f, q = info.model, info.limits, info.auth, info.features, info.quotas
    causal = m.task is TaskType.CAUSAL_LM
    return server_info_pb2.GetServerInfoResponse(
        base_model=m.base_model,
        task=_TASK[m.task],
        version=info.version,
        limits=server_info_pb2.ServerLimits(
            max_predict_inputs=lim.max_predict_inputs,
            max_text_chars=lim.max_text_chars,
            max_train_examples=lim.max_train_examples,
            max_lora_rank=lim.max_lora_rank,
            max_dataset_bytes=lim.max_dataset_bytes,
            max_request_bytes=lim.max_request_bytes,
            max_sequence_tokens=m.max_positions,
            max_input_tokens=m.classify_max_tokens,
            max_new_tokens_default=lim.max_new_tokens_default if causal else 0,
            max_new_tokens_limit=lim.max_new_tokens_limit if causal else 0,
            max_top_logprobs=MAX_TOP_LOGPROBS if causal else 0,
        ),
        auth=server_info_pb2.ServerAuth(
            mode=_AUTH.get(auth.mode, server_info_pb2.AUTH_MODE_UNSPECIFIED),
            jwt=auth.jwt,
            client_certificates=auth.client_certificates,
            reflection_requires_auth=auth.reflection_requires_auth,
        ),
        features=server_info_pb2.ServerFeatures(
            probabilities=f.probabilities,
            calibration=f.calibration,
            prediction_sets=f.prediction_sets,
            uncertainty=f.uncertainty,
            generation=f.generation,
            streaming_generation=f.streaming_generation,
            chat_template=f.chat_template,
        ),
        quotas=server_info_pb2.TenantQuotas(
            active_jobs=q.active_jobs,
            adapter_versions=q.adapter_versions,
            dataset_bytes=q.dataset_bytes,
            upload_bytes=q.upload_bytes,
            pinned_adapters=q.pinned_adapters,
            queued_predict_rows=q.queued_predict_rows,
        ),
    )


class ServerInfoServicer(server_info_pb2_grpc.ServerInfoServiceServicer):
    def __init__(self, server_info: ServerInfoService) -> None:
        self.server_info = server_info

    @rpc
    async def GetServerInfo(self, request, context):
        return server_info_pb(self.server_info.info())
