"""GET /health: a real database round trip, 503 when the database is unreachable."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.conf import settings
from django.db import connection

from tests.helpers import assert_error_shape
from tests.pgserver import free_port

pytestmark = pytest.mark.django_db


def test_health_reports_healthy_with_the_seeds_fields(api):
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["service"] == "mlops-service"
    assert body["monitoring"] == "prometheus"
    assert datetime.fromisoformat(body["timestamp"])
    assert body["database"]["status"] == "ok"


def test_in_development_health_names_the_environment_and_the_database(api):
    body = api.get("/health").json()
    assert body["environment"] == "development"
    assert body["database"]["vendor"] == connection.vendor


def test_in_production_health_says_only_what_a_load_balancer_needs(api, settings):
    settings.MLOPS_ENV, settings.IS_PRODUCTION = "production", True
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "service", "timestamp", "monitoring", "database", "folder"}
    assert body["database"] == {"status": "ok"}
    assert body["folder"] == {"status": "ok"}  # no counts: a load balancer needs only the word


def test_health_refuses_post(api):
    assert_error_shape(api.post("/health"), 405)


def test_health_answers_503_when_the_database_is_unreachable(live_service):
    # A PostgreSQL URL on a port where nothing listens: the service starts, the database never answers.
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    service = live_service(workers=1, extra_env={"DATABASE_URL": dead}, wait_healthy=False)

    status, headers, body = service.request("GET", "/health")

    assert status == 503
    assert body["status"] == "unhealthy"
    assert body["database"]["status"] == "unreachable"
    assert int(headers["Retry-After"]) == settings.MLOPS_RETRY_AFTER_SECONDS

    status, headers, body = service.request("POST", "/track", {"business_id": "b", "response_time_ms": 1, "tokens_used": 1})
    assert status == 503
    assert set(body) == {"error", "errors"}
    assert int(headers["Retry-After"]) == settings.MLOPS_RETRY_AFTER_SECONDS
