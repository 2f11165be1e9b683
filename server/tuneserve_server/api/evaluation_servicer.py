"""EvaluationService: CreateEvaluation, GetEvaluation, ListEvaluations, CancelEvaluation,
WatchEvaluation."""

from __future__ import annotations

from dataclasses import replace

from tuneserve.v1 import evaluations_pb2, evaluations_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.auth_interceptor import namespace
from tuneserve_server.api.evaluation_convert import evaluation_input, evaluation_pb
from tuneserve_server.api.rpc import require_id, rpc, rpc_stream
from tuneserve_server.services.evaluations import EvaluationService


class EvaluationServicer(evaluations_pb2_grpc.EvaluationServiceServicer):
    def __init__(self, evaluations: EvaluationService) -> None:
        self.evaluations = evaluations

    @rpc
    async def CreateEvaluation(self, request, context):
        inp = replace(evaluation_input(request), namespace=namespace(request.namespace))
        evaluation, created = await self.evaluations.create(inp)
        return evaluations_pb2.CreateEvaluationResponse(evaluation=evaluation_pb(evaluation), created=created)

    @rpc
    async def GetEvaluation(self, request, context):
        evaluation = await self.evaluations.get(
            namespace(request.namespace), require_id(request.evaluation_id, "evaluation_id")
        )
        return evaluations_pb2.GetEvaluationResponse(evaluation=evaluation_pb(evaluation))

    @rpc
    async def ListEvaluations(self, request, context):
        evaluations, token = await self.evaluations.list(
            namespace(request.namespace),
            states=convert.job_states(request.states),
            adapter_name=request.adapter_name,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return evaluations_pb2.ListEvaluationsResponse(
            evaluations=[evaluation_pb(e, detail=False) for e in evaluations], next_page_token=token
        )

    @rpc
    async def CancelEvaluation(self, request, context):
        evaluation = await self.evaluations.cancel(
            namespace(request.namespace), require_id(request.evaluation_id, "evaluation_id")
        )
        return evaluations_pb2.CancelEvaluationResponse(evaluation=evaluation_pb(evaluation))

    @rpc_stream
    async def WatchEvaluation(self, request, context):
        events = self.evaluations.watch(
            namespace(request.namespace),
            require_id(request.evaluation_id, "evaluation_id"),
            request.after_sequence,
        )
        async for event in events:
            yield evaluations_pb2.WatchEvaluationResponse(event=convert.event_pb(event))
