"""URL map of the service. Each app owns its routes; this file only wires them."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from metrics_app import prometheus, schema_views, views
from metrics_app.errors import client_error_response, error_response

urlpatterns = [
    path("health", views.health, name="health"),
    path("health/", views.health),
    path("track", views.track, name="track"),
    path("track/", views.track),
    path("track/batch", views.track_batch, name="track-batch"),
    path("track/batch/", views.track_batch),
    path("metrics", prometheus.metrics_view, name="metrics"),
    path("api/", include("metrics_app.api_urls")),
    path("api/schema/", schema_views.schema, name="api-schema"),
    path("api/docs/", schema_views.docs, name="api-docs"),
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
