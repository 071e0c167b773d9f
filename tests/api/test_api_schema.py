"""The OpenAPI schema and its UI, and a schema-driven run that finds no 500 and no response breaking the schema."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics_app.models import Business
from tests.analytics.helpers import NOW, store
from tests.helpers import require

try:
    import schemathesis
    from schemathesis import checks as st_checks
except ImportError:  # pragma: no cover - the dev requirements install it
    schemathesis = None


OURS = ("/health", "/track", "/v1/traces", "/api/analytics/", "/api/conversations/")


def ours(path: str) -> bool:
    return path.startswith(OURS)


def test_the_schema_documents_every_endpoint_and_its_errors(api, db):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in ["/health", "/track", "/track/batch", "/api/analytics/summary", "/api/analytics/funnel",
                 "/api/analytics/timeseries", "/api/analytics/breakdown/{dimension}", "/api/analytics/peak-hours",
                 "/api/conversations/", "/api/conversations/{id}", "/api/conversations/outcome", "/v1/traces"]:
        assert path in paths, path
    for path, operations in paths.items():
        if not ours(path):
            continue
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert codes & {"400", "401", "404", "405"}, f"{method.upper()} {path} documents no errors"
            for code in codes - {"200", "201", "207"}:
                body = operation["responses"][code].get("content", {}).get("application/json", {}).get("schema")
                if path == "/v1/traces" and code == "400":  # OTLP's own body for a malformed export
                    assert body == {"$ref": "#/components/schemas/RpcStatus"}
                elif path != "/health":
                    assert body == {"$ref": "#/components/schemas/Error"}, f"{method} {path} {code}"
    assert "cost_per_booked_appointment_usd" in schema["info"]["description"]


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_closed_docs_answer_a_staff_session_or_a_key_and_nobody_else(api, settings, business, make_key, path):
    from django.contrib.auth.models import User

    from tests.helpers import assert_error_shape

    settings.MLOPS_PUBLIC_API_DOCS = False
    _, raw = make_key(business)

    refused = assert_error_shape(api.get(path), 401)
    assert "staff session" in refused["error"]
    assert_error_shape(api.get(path, HTTP_AUTHORIZATION="Bearer mlk_000000000000_wrong"), 401)
    assert api.get(path, HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    api.force_login(User.objects.create_user("visitor"))
    assert_error_shape(api.get(path), 401)
    api.force_login(User.objects.create_user("staff", is_staff=True))
    assert api.get(path).status_code == 200


def test_the_docs_page_is_served_without_a_cdn(api, db):
    page = api.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()
    script = next(part.split('"')[0] for part in html.split('src="')[1:] if "swagger-ui-bundle" in part)
    assert api.get(script).status_code == 200


@pytest.fixture
def keep_test_connection():
    """Calls into the WSGI app must not close the test's database connection, as Django's test client ensures."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(db, make_key, keep_test_connection):
    business = Business.objects.create(id="acme-dental", time_zone="Asia/Kathmandu")
    store([
        {"event_id": f"00000000-0000-4000-8000-{n:012d}", "business_id": "acme-dental", "conversation_id": f"c{n % 3}",
         "response_time_ms": 500 + n, "tokens_used": 100 + n, "model_name": "gemini-1.5-flash",
         "timestamp": (NOW - timedelta(hours=n)).isoformat()}
        for n in range(12)
    ])
    _, agency = make_key(None, can_ingest=False, can_read=True)
    _, writer = make_key(business, can_ingest=True, can_read=True)
    return {"agency": agency, "writer": writer}


@pytest.mark.slow
def test_schema_driven_requests_find_no_500_and_no_response_outside_the_schema(seeded):
    require(schemathesis is not None, "schemathesis")
    from mlops_site.wsgi import application

    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    checks = [
        st_checks.not_a_server_error,
        st_checks.status_code_conformance,
        st_checks.content_type_conformance,
        st_checks.response_schema_conformance,
    ]
    operations = [op for op in (result.ok() for result in schema.get_all_operations()) if ours(op.path)]
    assert len(operations) >= 12
    for operation in operations:
        key = seeded["agency"] if operation.method.upper() == "GET" else seeded["writer"]

        @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), use_key=st.booleans())
        def run(case, use_key):
            headers = {"Authorization": f"Bearer {key}"} if use_key else {}  # noqa: B023  (run() is called in this iteration)
            case.call_and_validate(headers=headers, checks=checks)

        run()
