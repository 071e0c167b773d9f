"""URL map of the service. Each app owns its routes; this file only wires them."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from metrics_app.api import docs
from metrics_app.errors import client_error_response, error_response
from metrics_app.ingest import otlp
from metrics_app.ingest import views as ingest
from metrics_app.monitoring import health, prometheus

urlpatterns = [
    path("health", health.health, name="health"),
    path("health/", health.health),
    path("track", ingest.track, name="track"),
    path("track/", ingest.track),
    path("track/batch", ingest.track_batch, name="track-batch"),
    path("track/batch/", ingest.track_batch),
    path("v1/traces", otlp.traces, name="otlp-traces"),
    path("metrics", prometheus.metrics_view, name="metrics"),
    path("api/", include("metrics_app.api.urls")),
    path("api/schema/", docs.schema, name="api-schema"),
    path("api/docs/", docs.docs, name="api-docs"),
    path("api/knowledge-base/", include("documents_app.urls")),
    path("admin/", admin.site.urls),
]


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return client_error_response(exception)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(403, "Permission denied", {"permission": ["this account may not do that"]})


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(404, "Not found", {"path": [f"no endpoint at {request.path[:200]}"]})


def server_error(request: HttpRequest) -> HttpResponse:
    return error_response(500, "Internal server error")


handler400 = bad_request
handler403 = permission_denied
handler404 = not_found
handler500 = server_error
