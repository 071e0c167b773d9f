"""The chat app's ingest endpoints: /track and /track/batch.

These are plain Django views rather than DRF ones: they are the hot path, and
their parsing, validation and answers are all the service's own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from metrics_app import access, listeners
from metrics_app.errors import error_response, method_not_allowed, too_many_requests, unauthorized
from metrics_app.http import bodies as json_bodies
from metrics_app.ingest import services
from metrics_app.ingest.validation import check_event
from metrics_app.keys.auth import KeyRejected, authenticate_key, seconds_until_allowed
from metrics_app.listeners import IngestAnswer
from metrics_app.models import ApiKey

MAX_EVENT_BYTES = 64 * 1024
MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 500


class Refused(Exception):
    """A request refused with a complete error response; `rejected` when its body was no event at all."""

    def __init__(self, response: HttpResponse, rejected: int = 0) -> None:
        self.response = response
        self.answer = IngestAnswer(rejected=rejected)


_REJECTED_ONE = IngestAnswer(rejected=1)
_NOTHING = IngestAnswer()


def _json(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def ingest_key(request: HttpRequest) -> ApiKey | None:
    """The request's ingest key; None in development when no key was sent."""
    try:
        key = authenticate_key(request)
    except KeyRejected as exc:
        raise Refused(unauthorized(str(exc))) from None
    if key is None:
        if settings.MLOPS_ALLOW_ANONYMOUS_CHAT:
            return None
        raise Refused(unauthorized())
    if not access.may_write(key):
        raise Refused(error_response(403, "This API key may not write events", {"scope": ["needs the ingest scope"]}))
    wait = seconds_until_allowed(key)
    if wait:
        raise Refused(too_many_requests(wait))
    return key


def _json_body(request: HttpRequest, max_bytes: int) -> Any:
    content_type = request.content_type or ""
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Refused(
            error_response(415, "Unsupported content type", {"content_type": ["send application/json"]})
        )
    try:
        return json_bodies.read_json(request, max_bytes)
    except json_bodies.BodyRefused as refused:
        # A malformed body is an event refused; one too large was never read as one.
        raise Refused(refused.response(), rejected=1 if refused.status == 400 else 0) from None


def _ingest_request(request: HttpRequest, max_bytes: int) -> tuple[ApiKey | None, Any]:
    """The key and parsed body of an ingest request, or Refused with the answer to give."""
    if request.method != "POST":
        raise Refused(method_not_allowed("POST"))
    key = ingest_key(request)
    return key, _json_body(request, max_bytes)


def _outside_business(key: ApiKey, business_id: str) -> HttpResponse:
    return error_response(
        403, "This API key may not write that business",
        {"business_id": [f"this key belongs to {key.business_id!r}, not {business_id!r}"]},
    )


@csrf_exempt
def track(request: HttpRequest) -> HttpResponse:
    """Store one event: 201 when new, 200 with "duplicate": true for a repeated event_id."""
    response, answer = _track_one(request)
    listeners.ingest_answered(answer)
    return response


def _track_one(request: HttpRequest) -> tuple[HttpResponse, IngestAnswer]:
    try:
        key, payload = _ingest_request(request, MAX_EVENT_BYTES)
    except Refused as refused:
        return refused.response, refused.answer
    if not isinstance(payload, dict):
        body_error = {"body": ["send one event as a JSON object"]}
        return error_response(400, "The body must be a JSON object", body_error), _REJECTED_ONE
    checked = check_event(payload, default_business_id=key.business_id if key else None)
    if not checked.ok:
        return error_response(400, "Invalid event", checked.errors), _REJECTED_ONE
    if key is not None and not access.can_write(key, checked.values["business_id"]):
        return _outside_business(key, checked.values["business_id"]), _NOTHING

    (outcome,) = services.record_events([checked.values])
    body: dict[str, Any] = {
        "status": "success",
        "event_id": str(outcome.event_id),
        "timestamp": _now_iso(),
    }
    if outcome.created:
        body["message"] = "Metrics tracked successfully"
    else:
        body["message"] = "Event already recorded; the first write stands"
        body["duplicate"] = True
    if checked.ignored_fields:
        body["ignored_fields"] = checked.ignored_fields
    answer = IngestAnswer(created=1) if outcome.created else IngestAnswer(duplicates=1)
    return _json(body, status=201 if outcome.created else 200), answer


@csrf_exempt
def track_batch(request: HttpRequest) -> HttpResponse:
    """Store up to 500 events; valid ones are stored even when others are rejected."""
    response, answer = _track_batch(request)
    listeners.ingest_answered(answer)
    return response


def _track_batch(request: HttpRequest) -> tuple[HttpResponse, IngestAnswer]:
    try:
        key, payload = _ingest_request(request, MAX_BATCH_BYTES)
    except Refused as refused:
        return refused.response, _NOTHING  # a body that is no batch carries no countable events
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH_EVENTS:
        batch_error = {"events": [f"send {{\"events\": [...]}} with 1 to {MAX_BATCH_EVENTS} events"]}
        return error_response(400, "Invalid batch", batch_error), _NOTHING

    default_business = key.business_id if key else None
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, dict[str, Any]]] = []
    for index, raw in enumerate(events):
        checked = check_event(raw, default_business_id=default_business)
        result: dict[str, Any] = {"index": index, "event_id": None, "status": "rejected", "errors": checked.errors}
        if checked.ok:
            if key is not None and not access.can_write(key, checked.values["business_id"]):
                return _outside_business(key, checked.values["business_id"]), _NOTHING
            valid.append((index, checked.values))
            result["errors"] = {}
        elif isinstance(raw, dict) and isinstance(raw.get("event_id"), str):
            result["event_id"] = raw["event_id"][:45]
        if checked.ignored_fields:
            result["ignored_fields"] = checked.ignored_fields
        results.append(result)

    created = duplicates = 0
    if valid:
        outcomes = services.record_events([values for _, values in valid])
        for (index, _), outcome in zip(valid, outcomes, strict=True):
            results[index]["event_id"] = str(outcome.event_id)
            results[index]["status"] = "created" if outcome.created else "duplicate"
            created += outcome.created
            duplicates += not outcome.created
    rejected = len(events) - len(valid)
    body = {
        "status": "success" if not rejected else "partial",
        "created": created,
        "duplicates": duplicates,
        "rejected": rejected,
        "timestamp": _now_iso(),
        "results": results,
    }
    answer = IngestAnswer(created=created, duplicates=duplicates, rejected=rejected)
    return _json(body, status=207 if rejected else 200), answer
