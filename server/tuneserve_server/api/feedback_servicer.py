"""FeedbackService: feedback on served predictions, its listing and export, and the
per-adapter store_inputs setting; plus the pb conversions of feedback records and stats
(kept here, beside their only users)."""

from __future__ import annotations

from tuneserve.v1 import adapters_pb2, feedback_pb2, feedback_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.auth_interceptor import current_principal, namespace
from tuneserve_server.api.rpc import rpc
from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.feedback import FeedbackRecord, FeedbackSettings, FeedbackStats
from tuneserve_server.services.feedback import FeedbackInput, FeedbackService
from tuneserve_server.services.feedback_export import ExportKind

KIND_FROM_PB = {
    feedback_pb2.FEEDBACK_EXPORT_KIND_UNSPECIFIED: ExportKind.AUTO,
    feedback_pb2.FEEDBACK_EXPORT_KIND_LABELS: ExportKind.LABELS,
    feedback_pb2.FEEDBACK_EXPORT_KIND_COMPLETIONS: ExportKind.COMPLETIONS,
    feedback_pb2.FEEDBACK_EXPORT_KIND_PREFERENCE_PAIRS: ExportKind.PREFERENCE_PAIRS,
}


def feedback_pb(f: FeedbackRecord) -> feedback_pb2.Feedback:
    out = feedback_pb2.Feedback(
        id=f.id,
        namespace=f.namespace,
        prediction_id=f.prediction_id,
        adapter_name=f.adapter_name,
        adapter_version=f.adapter_version,
        task=convert.TASK_TO_PB[f.task],
        served_label=f.served_label,
        served_score=f.served_score,
        label=f.label,
        correct=f.correct,
        corrected_text=f.corrected_text,
        input=f.input_text,
        served_text=f.served_text,
        comment=f.comment,
        predicted_at=convert._ts(f.predicted_at),
        created_at=convert._ts(f.created_at),
    )
    if f.rating is not None:
        out.rating = f.rating
    return out


def stats_pb(s: FeedbackStats) -> feedback_pb2.FeedbackStats:
    return feedback_pb2.FeedbackStats(
        answered=s.answered,
        correct=s.correct,
        accuracy=s.accuracy,
        rated=s.rated,
        mean_rating=s.mean_rating,
        corrected=s.corrected,
    )


def add_stats(adapter: adapters_pb2.Adapter, stats: dict[int, FeedbackStats]) -> None:
    """Each version's live feedback quality into a GetAdapter answer (versions without
    feedback get zeros)."""
    for version in adapter.versions:
        version.feedback.CopyFrom(stats_pb(stats.get(version.version, FeedbackStats())))


def settings_pb(s: FeedbackSettings) -> feedback_pb2.FeedbackSettings:
    return feedback_pb2.FeedbackSettings(
        namespace=s.namespace,
        adapter_name=s.adapter_name,
        store_inputs=s.store_inputs,
        update_time=convert._ts(s.updated_at),
    )


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, feedback: FeedbackService) -> None:
        self.feedback = feedback

    @rpc
    async def SubmitFeedback(self, request, context):
        stored, created = await self.feedback.submit(
            FeedbackInput(
                namespace=namespace(request.namespace),
                prediction_id=request.prediction_id,
                label=request.label,
                correct=request.correct,
                rating=request.rating if request.HasField("rating") else None,
                corrected_text=request.corrected_text,
                input=request.input,
                served_text=request.served_text,
                comment=request.comment,
                key_id=current_principal().key_id,
            )
        )
        return feedback_pb2.SubmitFeedbackResponse(feedback=feedback_pb(stored), created=created)

    @rpc
    async def ListFeedback(self, request, context):
        rows, token = await self.feedback.list(
            namespace(request.namespace),
            request.adapter,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return feedback_pb2.ListFeedbackResponse(
            feedback=[feedback_pb(f) for f in rows], next_page_token=token
        )

    @rpc
    async def ExportFeedback(self, request, context):
        kind = KIND_FROM_PB.get(request.kind)
        if kind is None:
            raise InvalidRequest.field("kind", f"unknown export kind {request.kind}")
        result = await self.feedback.export(
            namespace(request.namespace), request.adapter, kind, request.display_name
        )
        out = feedback_pb2.ExportFeedbackResponse(
            jsonl=result.jsonl,
            rows=result.rows,
            skipped=result.skipped,
            conflicts_with_training=result.conflicts_with_training,
            conflicts=[
                feedback_pb2.FeedbackConflict(
                    text=c.text,
                    feedback_label=c.feedback_label,
                    training_label=c.training_label,
                    adapter_version=c.adapter_version,
                )
                for c in result.conflicts
            ],
        )
        if result.dataset is not None:
            out.dataset.CopyFrom(convert.dataset_pb(result.dataset))
        return out

    @rpc
    async def GetFeedbackSettings(self, request, context):
        s = await self.feedback.settings(namespace(request.namespace), request.adapter_name)
        return feedback_pb2.GetFeedbackSettingsResponse(settings=settings_pb(s))

    @rpc
    async def SetFeedbackSettings(self, request, context):
        s = await self.feedback.set_settings(
            namespace(request.namespace), request.adapter_name, request.store_inputs
        )
        return feedback_pb2.SetFeedbackSettingsResponse(settings=settings_pb(s))
