"""Per-business API keys: hashing, scopes, rotation, expiry, revocation and the shared rate limit."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from metrics_app.keys import services as key_services
from metrics_app.models import AIMetric, ApiKey, Business
from tests.helpers import assert_error_shape, post_json

pytestmark = pytest.mark.django_db


@pytest.fixture
def keys_required(settings):
    settings.MLOPS_ALLOW_ANONYMOUS_CHAT = False


def event_for(business_id: str = "acme-dental") -> dict:
    return {"business_id": business_id, "response_time_ms": 900, "tokens_used": 80}


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def test_a_key_is_stored_only_as_a_sha256_hash_behind_its_prefix(business, make_key):
    key, raw = make_key(business)

    assert raw.startswith(f"mlk_{key.prefix}_")
    assert len(raw) > 50
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.hashed_key == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {str(v) for v in ApiKey.objects.values_list(*[f.attname for f in ApiKey._meta.fields]).get()}


def test_without_a_key_ingest_is_refused_with_401_when_keys_are_required(api, keys_required, business):
    response = post_json(api, "/track", event_for())
    assert_error_shape(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert AIMetric.objects.count() == 0


def test_in_development_the_seeds_client_needs_no_key(api):
    assert post_json(api, "/track", event_for()).status_code == 201


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_a_business_key_writes_its_business_in_either_header(api, keys_required, business, make_key, header):
    _, raw = make_key(business)
    value = f"Bearer {raw}" if header == "Authorization" else raw
    response = post_json(api, "/track", event_for(), **{header: value})
    assert response.status_code == 201
    assert AIMetric.objects.get().business_id == business.id


def test_a_key_implies_its_business_when_the_event_names_none(api, keys_required, business, make_key):
    _, raw = make_key(business)
    payload = event_for()
    del payload["business_id"]
    assert post_json(api, "/track", payload, **bearer(raw)).status_code == 201
    assert AIMetric.objects.get().business_id == business.id


def test_a_key_may_not_write_another_business(api, keys_required, business, make_key):
    Business.objects.create(id="rival-salon")
    _, raw = make_key(business)

    body = assert_error_shape(post_json(api, "/track", event_for("rival-salon"), **bearer(raw)), 403, "business_id")
    assert "acme-dental" in body["errors"]["business_id"][0] and "rival-salon" in body["errors"]["business_id"][0]
    batch = {"events": [event_for(), event_for("rival-salon")]}
    assert_error_shape(post_json(api, "/track/batch", batch, **bearer(raw)), 403, "business_id")
    assert AIMetric.objects.count() == 0


def test_a_read_only_key_may_not_write(api, keys_required, business, make_key):
    _, raw = make_key(business, can_ingest=False, can_read=True)
    assert_error_shape(post_json(api, "/track", event_for(), **bearer(raw)), 403, "scope")


@pytest.mark.parametrize(
    "header",
    ["Bearer nonsense", "Bearer mlk_000000000000_wrongsecret", "Basic YWxhZGRpbjpvcGVu", "Bearer mlk_" + "a" * 300],
)
def test_an_unknown_or_malformed_key_is_refused_with_401_even_in_development(api, business, make_key, header):
    make_key(business)
    response = post_json(api, "/track", event_for(), Authorization=header)
    assert_error_shape(response, 401)
    assert AIMetric.objects.count() == 0


def test_a_key_with_the_right_prefix_and_a_wrong_secret_is_refused(api, business, make_key):
    key, raw = make_key(business)
    forged = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    assert_error_shape(post_json(api, "/track", event_for(), **bearer(forged)), 401)


def test_a_revoked_key_stops_working_and_a_rotated_key_goes_on(api, keys_required, business, make_key):
    old, old_raw = make_key(business, name="old")
    _, new_raw = make_key(business, name="new")
    assert post_json(api, "/track", event_for(), **bearer(old_raw)).status_code == 201

    key_services.revoke_api_key(old)

    assert_error_shape(post_json(api, "/track", event_for(), **bearer(old_raw)), 401)
    assert post_json(api, "/track", event_for(), **bearer(new_raw)).status_code == 201
    assert AIMetric.objects.count() == 2


def test_an_expired_key_is_refused(api, keys_required, business, make_key):
    _, raw = make_key(business, expires_at=timezone.now() - timedelta(seconds=1))
    assert_error_shape(post_json(api, "/track", event_for(), **bearer(raw)), 401)


# A moment 15 s into a minute: 45 s of that minute remain.
MID_MINUTE = datetime(2026, 3, 20, 12, 0, 15, tzinfo=UTC)


def test_a_key_past_its_rate_limit_gets_429_with_retry_after(api, keys_required, business, make_key, time_machine):
    time_machine.move_to(MID_MINUTE, tick=False)
    _, raw = make_key(business, rate_limit_per_minute=3)
    statuses = [post_json(api, "/track", event_for(), **bearer(raw)).status_code for _ in range(5)]

    assert statuses[:3] == [201, 201, 201]
    assert statuses[3:] == [429, 429]
    response = post_json(api, "/track", event_for(), **bearer(raw))
    assert_error_shape(response, 429)
    assert response["Retry-After"] == "46"  # the 45 s left of the minute, and one to be sure it is over
    assert AIMetric.objects.count() == 3


def test_a_limit_of_zero_is_refused_in_the_admin_and_never_becomes_the_default(
    api, keys_required, business, make_key, time_machine, admin_client
):
    form = {"business": business.pk, "name": "k", "can_ingest": "on", "rate_limit_per_minute": "0"}
    answer = admin_client.post("/admin/metrics_app/apikey/add/", form)
    assert answer.status_code == 200 and "API key created" not in answer.content.decode()
    assert not ApiKey.objects.filter(name="k").exists()
    # A zero stored some other way refuses every request: it is the key's limit, not a gap for the default.
    time_machine.move_to(MID_MINUTE, tick=False)
    key, raw = make_key(business, rate_limit_per_minute=1)
    ApiKey.objects.filter(pk=key.pk).update(rate_limit_per_minute=0)
    assert post_json(api, "/track", event_for(), **bearer(raw)).status_code == 429
    assert AIMetric.objects.count() == 0


def test_the_next_minute_brings_a_new_budget(api, keys_required, business, make_key, time_machine):
    time_machine.move_to(MID_MINUTE, tick=False)
    _, raw = make_key(business, rate_limit_per_minute=1)
    assert post_json(api, "/track", event_for(), **bearer(raw)).status_code == 201
    time_machine.move_to(MID_MINUTE.replace(second=59), tick=False)
    assert post_json(api, "/track", event_for(), **bearer(raw)).status_code == 429

    time_machine.move_to(MID_MINUTE.replace(minute=1, second=0), tick=False)
    assert post_json(api, "/track", event_for(), **bearer(raw)).status_code == 201
    assert AIMetric.objects.count() == 2


def test_each_key_has_its_own_budget(api, keys_required, business, make_key, time_machine):
    time_machine.move_to(MID_MINUTE, tick=False)
    _, first = make_key(business, rate_limit_per_minute=1)
    _, second = make_key(business, rate_limit_per_minute=1)
    assert post_json(api, "/track", event_for(), **bearer(first)).status_code == 201
    assert post_json(api, "/track", event_for(), **bearer(second)).status_code == 201
    assert post_json(api, "/track", event_for(), **bearer(first)).status_code == 429


def test_the_rate_limit_holds_across_server_processes(live_service, business, make_key):
    _, raw = make_key(business, rate_limit_per_minute=20)
    # The service's clock stands still, so every request falls in the one minute.
    service = live_service(workers=3, extra_env={"MLOPS_ALLOW_ANONYMOUS_CHAT": "false"}, frozen_at=MID_MINUTE)

    def send(_: int) -> tuple[int, dict[str, str]]:
        status, headers, _body = service.request("POST", "/track", event_for(), bearer(raw))
        return status, headers

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(send, range(45)))

    # Three workers, one budget: exactly 20 accepted, whatever worker served them.
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 20, statuses
    assert statuses.count(429) == 25, statuses
    assert {headers["Retry-After"] for status, headers in answers if status == 429} == {"46"}
    assert AIMetric.objects.count() == 20


def test_a_keys_last_use_is_recorded(api, business, make_key):
    key, raw = make_key(business)
    post_json(api, "/track", event_for(), **bearer(raw))
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_an_agency_key_can_only_read(business):
    with pytest.raises(ValueError):
        key_services.create_api_key(business=None, name="agency", can_ingest=True)
    key, _ = key_services.create_api_key(business=None, name="agency", can_ingest=False, can_read=True)
    assert key.scopes == ["read"]


# --- manage.py commands


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_api_key_prints_a_working_key_once(api, keys_required, business):
    out, err = run("create_api_key", business.id, "--name", "chat app", "--scope", "ingest")
    raw = out.strip()

    assert "shown only this once" in err
    key = ApiKey.objects.get()
    assert key.business == business and key.scopes == ["ingest"] and key.matches(raw)
    assert post_json(api, "/track", event_for(), **bearer(raw)).status_code == 201


def test_create_api_key_refuses_an_unknown_business_unless_told_to_create_it(db, time_machine):
    time_machine.move_to(MID_MINUTE, tick=False)
    with pytest.raises(CommandError, match="--create-business"):
        run("create_api_key", "new-biz", "--name", "x")
    run("create_api_key", "new-biz", "--name", "x", "--create-business", "--expires-in-days", "30")
    key = ApiKey.objects.get()
    assert key.business_id == "new-biz"
    assert key.expires_at == MID_MINUTE + timedelta(days=30)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--agency", "--scope", "ingest"), "only read"),
        (("acme-dental", "--agency", "--scope", "read"), "no business"),
        (("acme-dental", "--expires-in-days", "0"), "at least 1"),
        (("bad id!",), "may hold only"),
    ],
)
def test_create_api_key_explains_bad_options(business, args, message):
    with pytest.raises(CommandError, match=message):
        run("create_api_key", *args, "--name", "x")


def test_revoke_and_list_api_keys(api, business, make_key):
    key, raw = make_key(business, name="front desk")
    out, _ = run("list_api_keys")
    assert key.prefix in out and "front desk" in out and "active" in out
    assert raw not in out

    out, _ = run("revoke_api_key", key.prefix)
    assert "is now revoked" in out
    assert_error_shape(post_json(api, "/track", event_for(), **bearer(raw)), 401)
    assert "revoked" in run("list_api_keys", "--business", business.id)[0]
    with pytest.raises(CommandError):
        run("revoke_api_key", "ffffffffffff")


# --- the admin


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "a-strong-password-1")
    client.force_login(user)
    return client


def test_the_admin_shows_a_new_key_once_and_stores_only_its_hash(staff_client, business):
    response = staff_client.post(
        "/admin/metrics_app/apikey/add/",
        {"business": business.id, "name": "chat app", "can_ingest": "on", "rate_limit_per_minute": ""},
    )
    assert response.status_code == 200, response.content[:2000]
    key = ApiKey.objects.get()
    raw = response.context["raw_key"]
    assert key.matches(raw) and key.created_by.username == "boss"
    assert raw.encode() in response.content
    assert "no-store" in response["Cache-Control"]

    page = staff_client.get(f"/admin/metrics_app/apikey/{key.pk}/change/")
    assert page.status_code == 200 and raw.encode() not in page.content


def test_the_admin_refuses_an_agency_key_that_writes(staff_client):
    response = staff_client.post("/admin/metrics_app/apikey/add/", {"name": "agency", "can_ingest": "on"})
    assert response.status_code == 200
    assert b"may only read" in response.content
    assert ApiKey.objects.count() == 0


def test_the_admin_revokes_keys_with_an_action(staff_client, business, make_key):
    key, _ = make_key(business)
    staff_client.post(
        "/admin/metrics_app/apikey/", {"action": "revoke_selected", "_selected_action": [key.pk]}
    )
    key.refresh_from_db()
    assert key.revoked_at is not None
