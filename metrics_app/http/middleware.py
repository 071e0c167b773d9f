"""Middleware that keeps client-caused and database failures out of 500s: a lost or busy database, a rate
limiter that cannot answer (503 with Retry-After), a NUL character (400)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, QueryDict

from metrics_app import replica
from metrics_app.analytics.rollups import RebuildPending
from metrics_app.database import is_busy
from metrics_app.errors import analytics_rebuilding, database_unavailable, error_response, rate_limiter_unavailable
from metrics_app.keys.rate_limit import LimiterUnavailable

logger = logging.getLogger(__name__)

NUL_REFUSED = "must not contain NUL (0x00) characters"


class DatabaseUnavailableMiddleware:
    """A view that loses the database answers 503; the client retries later.

    Each write is one transaction, so a request cut off here stored nothing.
    The broken connection is closed so the next request opens a fresh one.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, LimiterUnavailable):
            # A limit fails closed: a request the counter cannot count is refused, not let through.
            logger.warning("rate limiter unavailable during %s %s: %s", request.method, request.path, exception)
            return rate_limiter_unavailable()
        if isinstance(exception, RebuildPending):
            return analytics_rebuilding()
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("database unavailable during %s %s: %s", request.method, request.path, exception)
        for conn in connections.all(initialized_only=True):
            conn.close()
        return database_unavailable(busy=is_busy(exception))


def _nul_field(fields: QueryDict) -> str | None:
    """The name of the first field whose name or value holds a NUL character, if any."""
    for name, values in fields.lists():
        if "\x00" in name or any("\x00" in value for value in values):
            return name.replace("\x00", "\\x00")[:100]
    return None


class RefuseNulCharactersMiddleware:
    """A NUL character in the path, the query string or a form is a 400, on every page and endpoint.

    PostgreSQL text cannot hold NUL (0x00), and psycopg refuses such a
    parameter with ValueError: an admin filter, search, autocomplete term,
    action or the CSV export would otherwise answer 500. SQLite gets the same
    answer, so both databases behave alike.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name = "path" if "\x00" in request.path else _nul_field(request.GET)
        if name is not None:
            return _nul_refused(name)
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponse | None:
        # Forms are read by the views that take them (the admin's), which the CSRF check reads anyway; the
        # csrf-exempt JSON endpoints keep their bodies unread, so that they can answer 415 to a form.
        if request.method != "POST" or getattr(view, "csrf_exempt", False):
            return None
        name = _nul_field(request.POST)
        return _nul_refused(name) if name is not None else None


def _nul_refused(name: str) -> HttpResponse:
    return error_response(400, "Invalid input", {name: [NUL_REFUSED]})


# The reads a replica may answer: analytics, conversations, experiment results, and the console's pages.
REPLICA_READ_PATHS = ("/api/analytics/", "/api/conversations/", "/api/experiments/", "/admin/metrics_app/")
READS_FROM_HEADER = "X-MLOps-Reads-From"


class ReplicaReadsMiddleware:
    """With DATABASE_REPLICA_URL, a read of analytics, conversations or the console comes from the replica.

    Only while the replica is healthy (metrics_app.replica), and not for a
    staff session that wrote within DATABASE_REPLICA_PIN_SECONDS: that one reads
    its own writes from the primary. A read the replica fails (it went down
    mid-request) is answered again from the primary. The answer says which
    database it read in the X-MLOps-Reads-From header.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not replica.configured():
            return self.get_response(request)
        safe = request.method in ("GET", "HEAD")
        if not safe:
            response = self.get_response(request)
            if response.status_code < 400 and _session_user(request):
                replica.pin_to_primary(request.session)
            return response
        if not request.path.startswith(REPLICA_READ_PATHS):
            return self.get_response(request)
        if not (_session_user(request) and replica.pinned(request.session)) and replica.state().usable:
            with replica.reads_from(replica.REPLICA):
                response = self.get_response(request)
            if response.status_code != 503:
                response[READS_FROM_HEADER] = "replica"
                return response
            replica.forget_state()  # measured again by the next read; this one is answered by the primary
        response = self.get_response(request)
        response[READS_FROM_HEADER] = "primary"
        return response


def _session_user(request: HttpRequest) -> bool:
    """A signed-in staff session (API keys carry no session, and read what the replica has)."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and hasattr(request, "session"))
