"""GET /health: liveness with a real database round trip, for load balancers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from metrics_app import database, replica
from metrics_app.errors import method_not_allowed
from metrics_app.folding import services as folding

SERVICE_NAME = "mlops-service"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


@csrf_exempt
def health(request: HttpRequest) -> HttpResponse:
    """Liveness with a real database round trip; 503 when the database is away or busy.

    "degraded" (200) when a configured replica lags past its bound or is down (reads then come from the
    primary), or when the folder is behind by more than MLOPS_FOLDER_MAX_BACKLOG
    events, or events wait with no folder running: ingest and reads still work
    (reads add the unfolded events themselves), but they slow as the backlog grows.

    "busy" is an SQLite file whose write lock another writer holds: reads work,
    writes wait. Production says only what a load balancer needs; development
    adds the environment, the database vendor and the error's type.
    """
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed("GET, HEAD")
    details = not settings.IS_PRODUCTION
    body: dict[str, Any] = {
        "status": "healthy",
        "service": SERVICE_NAME,
        "timestamp": _now_iso(),
        "monitoring": "prometheus",
        "database": {"status": "ok"},
    }
    if details:
        body["environment"] = settings.MLOPS_ENV
        body["database"]["vendor"] = connection.vendor
    checked = database.probe(connection)
    if checked.state == database.OK:
        _add_folder(body, details)
        _add_replica(body, details)
    if checked.state != database.OK:
        body["status"] = "unhealthy"
        body["database"]["status"] = checked.state
        if details:
            body["database"]["error"] = checked.error
        response = JsonResponse(body, status=503)
        response["Retry-After"] = str(settings.MLOPS_RETRY_AFTER_SECONDS)
        return response
    return JsonResponse(body)


def _add_replica(body: dict[str, Any], details: bool) -> None:
    """With a replica configured: its state and lag; "degraded" while reads fall back to the primary."""
    if not replica.configured():
        return
    state = replica.state()
    body["replica"] = state.as_dict(details)
    if not state.usable:
        body["status"] = "degraded"


def _add_folder(body: dict[str, Any], details: bool) -> None:
    """The folder's backlog and lag; "degraded" (still 200: the service serves) when it falls behind."""
    try:
        folder = folding.status()
    except DatabaseError as exc:
        body["folder"] = {"status": "unknown"}
        if details:
            body["folder"]["error"] = type(exc).__name__
        return
    body["folder"] = folder.as_dict() if details else {"status": folder.as_dict()["status"]}
    if folder.degraded:
        body["status"] = "degraded"
