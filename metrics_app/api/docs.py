"""The OpenAPI schema and its UI: open in development, behind a staff session or an API key in production.

The schema lists every endpoint, field and limit of the service: in production
it is for the service's own people and clients, not for whoever finds the host.
MLOPS_PUBLIC_API_DOCS opens it to everyone.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from metrics_app.errors import too_many_requests, unauthorized
from metrics_app.keys.auth import KeyRejected, authenticate_key, seconds_until_allowed

View = Callable[..., HttpResponse]


def refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the request may read the docs; otherwise the answer to give.

    An active staff session may; so may any usable API key, whatever its scope,
    counted against the key's budget like any other request.
    """
    if settings.MLOPS_PUBLIC_API_DOCS:
        return None
    user = request.user
    if user.is_active and getattr(user, "is_staff", False):
        return None
    try:
        key = authenticate_key(request)
    except KeyRejected as exc:
        return unauthorized(str(exc))
    if key is None:
        return unauthorized("An API key or a staff session is required")
    wait = seconds_until_allowed(key)
    if wait:
        return too_many_requests(wait)
    return None


def guarded(view: View) -> View:
    @wraps(view)
    def guarded_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return refusal(request) or view(request, *args, **kwargs)

    return guarded_view


schema = guarded(SpectacularAPIView.as_view())
docs = guarded(SpectacularSwaggerView.as_view(url_name="api-schema"))
