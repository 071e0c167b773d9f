"""GET /health: liveness with a real database round trip, for load balancers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from metrics_app import database
from metrics_app.errors import method_not_allowed

SERVICE_NAME = "mlops-service"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


@csrf_exempt
def health(request: HttpRequest) -> HttpResponse:
    """Liveness with a real database round trip; 503 when the database is away or busy.

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
    if checked.state != database.OK:
        body["status"] = "unhealthy"
        body["database"]["status"] = checked.state
        if details:
            body["database"]["error"] = checked.error
        response = JsonResponse(body, status=503)
        response["Retry-After"] = str(settings.MLOPS_RETRY_AFTER_SECONDS)
        return response
    return JsonResponse(body)
