"""The conversations endpoints: list, detail, and recording an outcome after the fact.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics_app import access
from metrics_app.api.analytics import AnalyticsView
from metrics_app.api.permissions import CanRecordOutcome
from metrics_app.api.queries import ConversationQuerySerializer, _period, _query, refuse_reads_of_pruned_raw_events
from metrics_app.api.serializers import (
    READ_ERRORS,
    ConversationDetailSerializer,
    ConversationListSerializer,
    ConversationSerializer,
    EventSerializer,
    OutcomeResultSerializer,
    OutcomeSerializer,
    _errors,
)
from metrics_app.conversations import selectors as reading
from metrics_app.conversations import services as conversations
from metrics_app.folding import services as folding
from metrics_app.models import Conversation

MAX_EVENTS_ANSWERED = 1000  # a conversation's detail lists at most this many events


class ConversationListView(AnalyticsView):
    @extend_schema(
        operation_id="conversations_list", tags=["conversations"], parameters=[ConversationQuerySerializer],
        responses={200: ConversationListSerializer, **READ_ERRORS},
        description="Conversations that started in the period, newest first, with turns, first and last time, "
        "tokens, cost, latency and outcome.",
    )
    def get(self, request: Request) -> Response:
        filters, data = _query(request, ConversationQuerySerializer)
        if filters.event_filters:  # they pick conversations by their raw events
            refuse_reads_of_pruned_raw_events(filters, raw_only=True)
        limit, offset = data["limit"], data["offset"]
        page, more = reading.conversation_page(
            filters, limit=limit, offset=offset, conversation_id=data.get("conversation_id"),
            booked=data.get("booked"), handed_off=data.get("handed_off"), state=data.get("state"),
            negative_end=data.get("ended_negative"),
        )
        items = ConversationSerializer(reading.with_figures(page), many=True).data
        return Response({
            "period": _period(filters), "count": len(items),
            "next_offset": offset + limit if more else None, "conversations": items,
        })


def _visible_conversation(request: Request, pk: int) -> Conversation:
    conversation = reading.conversation_by_pk(pk)
    if conversation is None or not access.can_see(request.user, conversation.business_id):
        raise NotFound("No such conversation")
    return conversation


class ConversationDetailView(AnalyticsView):
    @extend_schema(
        operation_id="conversations_detail", tags=["conversations"],
        responses={200: ConversationDetailSerializer, **_errors(401, 403, 404, 405, 429, 503)},
        description="One conversation with its events in time order (message text is never stored).",
    )
    def get(self, request: Request, pk: int) -> Response:
        conversation = _visible_conversation(request, pk)
        (item,) = reading.with_figures([conversation])
        events = reading.events_of(conversation, limit=MAX_EVENTS_ANSWERED)
        item["events"] = list(events.values(*EventSerializer().fields))
        return Response(ConversationDetailSerializer(item).data)


class Rebuilding(APIException):
    status_code = 503
    default_detail = "The analytics are being rebuilt after an upgrade; retry shortly"
    default_code = "rebuilding"


class FolderBehind(APIException):
    status_code = 503
    default_detail = "The conversation's events are not folded yet; retry shortly"
    default_code = "folder_behind"


def _folded(business_id: str, conversation_id: str) -> bool:
    """Fold the conversation's stored events if the folder has not yet; False when it has none."""
    try:
        return folding.fold_conversation(business_id, conversation_id)
    except folding.RebuildNeeded:
        raise Rebuilding() from None
    except folding.FolderBehind:
        raise FolderBehind() from None


class ConversationOutcomeView(APIView):
    permission_classes = [CanRecordOutcome]

    @extend_schema(
        operation_id="conversations_record_outcome", tags=["conversations"], request=OutcomeSerializer,
        responses={200: OutcomeResultSerializer, **_errors(400, 401, 403, 404, 405, 429, 503)},
        description="Record an outcome after the fact (a booking confirmed later by another system). Flags only "
        "turn on; repeating a request changes nothing. The conversation's latest event takes the flag, so event "
        "and conversation figures agree, and a new booking moves the booked-appointments counter.",
    )
    def post(self, request: Request) -> Response:
        body = OutcomeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        key = getattr(request.user, "key", None)
        business_id = data.get("business_id") or (key.business_id if key is not None else None)
        if not business_id:
            raise ValidationError({"business_id": ["this field is required"]})
        if not access.can_write(request.user, business_id):
            raise PermissionDenied("You may not record outcomes for that business")
        conversation = reading.conversation_of(business_id, data["conversation_id"])
        if conversation is None and _folded(business_id, data["conversation_id"]):
            conversation = reading.conversation_of(business_id, data["conversation_id"])  # its events, just folded
        if conversation is None:
            raise NotFound("No such conversation")
        names = ("appointment_booked", "appointment_requested", "human_handoff_requested")
        flags = {name: data[name] for name in names}
        result = conversations.record_outcome(conversation, flags=flags, note=data["note"])
        (item,) = reading.with_figures([result.conversation])
        return Response({"changed": result.changed, "conversation": ConversationSerializer(item).data})
