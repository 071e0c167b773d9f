"""Errors a client can cause: every one a 4xx in the error shape, the same at every door, never a 500."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.urls import reverse

from metrics_app.http.bodies import MAX_JSON_DEPTH
from metrics_app.models import AIMetric, Conversation
from tests.helpers import LiveService

OUTCOME = "/api/conversations/outcome"


@pytest.fixture
def writer(make_key, business) -> dict[str, str]:
    _, raw = make_key(business, can_ingest=True, can_read=False)
    return {"Authorization": f"Bearer {raw}"}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "errors"} and body["errors"], body
    return body


# --- One strict JSON parser for every API.


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [1000, MAX_JSON_DEPTH + 1])
def test_json_nested_too_deep_gets_the_same_400_from_the_outcome_api_and_the_ingest(api, writer, depth):
    outcome = api.post(OUTCOME, nested(depth), content_type="application/json", headers=writer)
    track = api.post("/track", nested(depth), content_type="application/json", headers=writer)

    assert assert_error_shape(outcome, 400) == assert_error_shape(track, 400)
    assert outcome.json()["errors"] == {"body": [f"at most {MAX_JSON_DEPTH} levels of arrays and objects"]}


@pytest.mark.django_db
def test_malformed_json_gets_the_same_400_from_the_outcome_api_and_the_ingest(api, writer):
    outcome = api.post(OUTCOME, b'{"conversation_id": NaN}', content_type="application/json", headers=writer)
    track = api.post("/track", b'{"conversation_id": NaN}', content_type="application/json", headers=writer)

    assert assert_error_shape(outcome, 400) == assert_error_shape(track, 400)
    assert outcome.json()["error"] == "Malformed JSON"


@pytest.mark.django_db
def test_an_outcome_body_over_1_mib_is_the_json_413(api, writer):
    body = json.dumps({"conversation_id": "chat-1", "appointment_booked": True, "note": "x" * (1024 * 1024)})

    response = api.post(OUTCOME, body, content_type="application/json", headers=writer)

    assert assert_error_shape(response, 413)["errors"] == {"body": ["at most 1048576 bytes"]}


# --- NUL characters never reach PostgreSQL.

NUL_PAGES = [
    reverse("admin:metrics_app_aimetric_changelist") + "?business=%00",
    reverse("admin:metrics_app_aimetric_export") + "?business=%00",
    reverse("admin:metrics_app_aimetric_changelist") + "?model=gemini%00",
    reverse("admin:metrics_app_conversation_changelist") + "?business=%00",
    reverse("admin:metrics_app_conversation_changelist") + "?business__id__exact=%00",
    reverse("admin:metrics_app_conversation_changelist") + "?q=chat%00",
    reverse("admin:metrics_app_business_changelist") + "?q=%00",
    reverse("admin:metrics_app_business_changelist") + "acme%00/change/",
    reverse("admin:autocomplete") + "?app_label=metrics_app&model_name=staffbusinessaccess&field_name=business&term=%00",
]


@pytest.mark.django_db
@pytest.mark.parametrize("url", NUL_PAGES)
def test_a_nul_character_in_an_admin_filter_search_or_term_is_a_clear_400(superuser, logged_in, store_event, url):
    store_event(business_id="acme-dental", conversation_id="chat-1")

    response = logged_in(superuser).get(url)

    body = assert_error_shape(response, 400)
    assert list(body["errors"].values()) == [["must not contain NUL (0x00) characters"]]


@pytest.mark.django_db
@pytest.mark.parametrize("url, form", [
    (reverse("admin:metrics_app_business_changelist"), {"action": "delete_selected", "_selected_action": ["acme\x00"]}),
    (reverse("admin:metrics_app_conversation_changelist"), {"action": "mark_booked", "_selected_action": ["1\x00"]}),
    (reverse("admin:metrics_app_staffbusinessaccess_add"), {"user": "1", "business": "acme-dental\x00"}),
])
def test_a_nul_character_in_an_admin_form_is_a_clear_400(superuser, logged_in, store_event, url, form):
    store_event(business_id="acme-dental", conversation_id="chat-1")

    response = logged_in(superuser).post(url, form)

    body = assert_error_shape(response, 400)
    assert list(body["errors"].values()) == [["must not contain NUL (0x00) characters"]]


@pytest.mark.django_db
def test_a_nul_character_in_an_analytics_query_names_the_parameter(api, make_key, business):
    _, raw = make_key(business, can_read=True)

    response = api.get("/api/analytics/summary", {"intent": "pricing\x00"}, headers={"Authorization": f"Bearer {raw}"})

    assert assert_error_shape(response, 400)["errors"] == {"intent": ["must not contain NUL (0x00) characters"]}


# --- Admin actions on a selection that is no list of row ids.


@pytest.mark.django_db
@pytest.mark.parametrize("selected", ["abc", "99999999999999999999"])
def test_an_admin_action_on_a_selection_that_is_no_row_id_is_a_clear_400(superuser, logged_in, store_event, selected):
    store_event(business_id="acme-dental", conversation_id="chat-1")
    page = reverse("admin:metrics_app_conversation_changelist")

    response = logged_in(superuser).post(page, {"action": "mark_booked", "_selected_action": [selected], "index": "0"})

    assert assert_error_shape(response, 400)["errors"] == {"_selected_action": [f"{selected!r} is not an id of this list"]}
    assert not Conversation.objects.filter(appointment_booked=True).exists()


# --- Django's own errors come in the error shape.


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/track", "/api/analytics/summary", "/api/knowledge-base/search", "/health"])
def test_a_bad_host_header_gets_the_json_400(api, settings, path):
    settings.ALLOWED_HOSTS = ["mlops.example.com"]

    response = api.get(path, headers={"Host": "attacker.example.net"})

    assert assert_error_shape(response, 400)["errors"] == {"host": ["not a host name this service answers to"]}


@pytest.mark.django_db
def test_a_form_over_the_body_limit_is_the_json_413(api):
    response = api.post("/admin/login/", "username=" + "x" * (1024 * 1024), content_type="application/x-www-form-urlencoded")

    assert assert_error_shape(response, 413)["errors"] == {"body": ["at most 1048576 bytes"]}


@pytest.mark.django_db
def test_a_form_with_too_many_fields_is_the_json_400(api):
    fields = "&".join(f"f{i}=1" for i in range(1001))

    response = api.post("/admin/login/", fields, content_type="application/x-www-form-urlencoded")

    assert assert_error_shape(response, 400)["error"] == "Too many form fields"


@pytest.mark.django_db
def test_a_multipart_body_without_a_boundary_is_the_json_400(api):
    response = api.post("/admin/login/", b"username=x", content_type="multipart/form-data")

    assert_error_shape(response, 400)


@pytest.mark.django_db
def test_a_body_sent_to_the_api_in_another_format_is_the_json_415(api, writer):
    response = api.post(OUTCOME, b"--b\r\nbad", content_type="multipart/form-data; boundary=b", headers=writer)

    assert response.status_code == 415
    assert set(response.json()) == {"error", "errors"}



@pytest.mark.django_db
def test_a_staff_page_refused_by_django_is_the_json_403(staff_factory, logged_in):
    response = logged_in(staff_factory(perms=())).get(reverse("admin:metrics_app_aimetric_export"))

    assert assert_error_shape(response, 403)["errors"] == {"permission": ["this account may not do that"]}


# --- Chunked bodies, sent to the real service.


@pytest.fixture
def service(live_service) -> Iterator[LiveService]:
    yield live_service(workers=1)


def post_chunked(service: LiveService, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST `body` with Transfer-Encoding: chunked and no Content-Length, as stock HTTP clients do."""
    address = urlsplit(service.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        pieces = (body[i:i + 16384] for i in range(0, len(body), 16384))
        connection.request(
            "POST", path, body=pieces, encode_chunked=True,
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked", **(headers or {})},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.slow
def test_a_chunked_event_is_stored(service, seed_event):
    status, body = post_chunked(service, "/track", json.dumps(seed_event).encode())

    assert status == 201, body
    assert AIMetric.objects.filter(event_id=body["event_id"], business_id="test-business").count() == 1


@pytest.mark.slow
def test_a_chunked_batch_is_stored(service, seed_event):
    events = [{**seed_event, "conversation_id": f"chat-{n}"} for n in range(3)]

    status, body = post_chunked(service, "/track/batch", json.dumps({"events": events}).encode())

    assert status == 200, body
    assert body["created"] == 3 and AIMetric.objects.count() == 3


@pytest.mark.slow
@pytest.mark.parametrize("path, limit", [("/track", 64 * 1024), ("/track/batch", 1024 * 1024)])
def test_a_chunked_body_over_the_limit_is_the_json_413(service, seed_event, path, limit):
    padded = json.dumps({**seed_event, "padding": "x" * limit}).encode()

    status, body = post_chunked(service, path, padded)

    assert status == 413, body
    assert body == {"error": "Request body too large", "errors": {"body": [f"at most {limit} bytes"]}}
    assert AIMetric.objects.count() == 0


@pytest.mark.slow
def test_a_chunked_outcome_is_recorded(service, seed_event, make_key, business):
    _, raw = make_key(business, can_ingest=True)
    auth = {"Authorization": f"Bearer {raw}"}
    event = {**seed_event, "business_id": business.id, "conversation_id": "chat-1"}
    assert post_chunked(service, "/track", json.dumps(event).encode(), auth)[0] == 201
    outcome = {"conversation_id": "chat-1", "appointment_booked": True}

    status, body = post_chunked(service, OUTCOME, json.dumps(outcome).encode(), auth)

    assert status == 200, body
    assert body["changed"] == ["appointment_booked"]
    assert Conversation.objects.get(business_id=business.id, conversation_id="chat-1").appointment_booked


@pytest.mark.slow
def test_a_chunked_outcome_over_1_mib_is_the_json_413(service, make_key, business):
    _, raw = make_key(business, can_ingest=True)
    outcome = {"conversation_id": "chat-1", "appointment_booked": True, "note": "x" * (1024 * 1024)}

    status, body = post_chunked(service, OUTCOME, json.dumps(outcome).encode(), {"Authorization": f"Bearer {raw}"})

    assert status == 413, body
    assert body == {"error": "Request body too large", "errors": {"body": ["at most 1048576 bytes"]}}
