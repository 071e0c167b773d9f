"""The conversations endpoints: list, detail, and recording an outcome after the fact.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics_app import access
from metrics_app.analytics import selectors
from metrics_app.api.analytics import AnalyticsView
from metrics_app.api.permissions import CanRecordOutcome
from metrics_app.api.queries import ConversationQuerySerializer, _period, _query
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
from metrics_app.conversations import services as conversations
from metrics_app.conversations.selectors import with_figures as _with_figures
from metrics_app.models import AIMetric, Conversation


class ConversationListView(AnalyticsView):
    @extend_schema(
        operation_id="conversations_list", tags=["conversations"], parameters=[ConversationQuerySerializer],
        responses={200: ConversationListSerializer, **READ_ERRORS},
        description="Conversations that started in the period, newest first, with turns, first and last time, "
        "tokens, cost, latency and outcome.",
    )
    def get(self, request: Request) -> Response:
        filters, data = _query(request, ConversationQuerySerializer)
        found = selectors.conversations_in(filters)
        if data.get("conversation_id"):
            found = found.filter(conversation_id=data["conversation_id"])
        if data.get("booked") is not None:
            found = found.filter(appointment_booked=data["booked"])
        if data.get("handed_off") is not None:
            found = found.filter(human_handoff_requested=data["handed_off"])
        limit, offset = data["limit"], data["offset"]
        page = list(found.order_by("-first_at", "-id")[offset:offset + limit + 1])
        more = len(page) > limit
        items = ConversationSerializer(_with_figures(page[:limit]), many=True).data
        return Response({
            "period": _period(filters), "count": len(items),
            "next_offset": offset + limit if more else None, "conversations": items,
        })


def _visible_conversation(request: Request, pk: int) -> Conversation:
    conversation = Conversation.objects.filter(pk=pk).first()
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
        (item,) = _with_figures([conversation])
        events = AIMetric.objects.filter(
            business_id=conversation.business_id, conversation_id=conversation.conversation_id
        ).order_by("timestamp", "id")[:1000]
        item["events"] = list(events.values(*EventSerializer().fields))
        return Response(ConversationDetailSerializer(item).data)


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
        if not access.can_record_outcomes(request.user, business_id):
            raise PermissionDenied("You may not record outcomes for that business")
        conversation = Conversation.objects.filter(
            business_id=business_id, conversation_id=data["conversation_id"]
        ).first()
        if conversation is None:
            raise NotFound("No such conversation")
        flags = {name: data[name] for name in ("appointment_booked", "appointment_requested", "human_handoff_requested")}
        result = conversations.record_outcome(conversation, flags=flags, note=data["note"])
        (item,) = _with_figures([result.conversation])
        return Response({"changed": result.changed, "conversation": ConversationSerializer(item).data})
