"""Turns a lost or busy database, and a rate limiter that cannot answer, into 503 with Retry-After instead of a 500."""

from __future__ import annotations

import logging
from typing import Callable

from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse

from metrics_app.database import is_busy
from metrics_app.errors import database_unavailable, rate_limiter_unavailable
from metrics_app.rate_limit import LimiterUnavailable

logger = logging.getLogger(__name__)


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
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("database unavailable during %s %s: %s", request.method, request.path, exception)
        for conn in connections.all(initialized_only=True):
            conn.close()
        return database_unavailable(busy=is_busy(exception))
