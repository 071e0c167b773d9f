"""One business-id rule at every door: ingest, the admin, key commands, the key's default, the documents app."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core import checks
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client

from documents_app.models import Document
from documents_app.pipeline import stages as pipeline
from metrics_app.models import AIMetric, ApiKey, Business
from tests.helpers import ROOT, post_json

pytestmark = pytest.mark.django_db

ODD = 'Odd Biz/../<b>"x"</b>'
COLON = "acme:eu@1"
EVENT = {"response_time_ms": 900, "tokens_used": 80}
HOURS = b"Opening Hours\n" + b"We open at nine and close at six on weekdays, and at noon on Saturdays. " * 4 + b"\n"


@pytest.fixture
def admin_client(db) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw-for-tests-only"))
    return client


# The business page's inline tables (API keys, opening hours, exceptions), sent empty, and the idle time
# field as the page fills it in.
NO_INLINE_ROWS = {**{f"{prefix}-{count}": 0 for prefix in ("api_keys", "opening_hours", "opening_exceptions")
                     for count in ("TOTAL_FORMS", "INITIAL_FORMS")}, "conversation_idle_minutes": 30}


def test_the_business_admin_refuses_an_id_that_breaks_the_rule(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/metrics_app/business/add/", {"id": ODD, "name": "Odd", "time_zone": "UTC", **NO_INLINE_ROWS}
    )
    assert response.status_code == 200
    assert "A business id may hold only letters, digits and . _ : @ -" in response.content.decode()
    assert not Business.objects.filter(pk=ODD).exists()


def test_the_business_admin_takes_an_id_that_track_takes(admin_client: Client, api: Client) -> None:
    response = admin_client.post(
        "/admin/metrics_app/business/add/",
        {"id": COLON, "name": "Acme EU", "time_zone": "UTC", **NO_INLINE_ROWS},
    )
    assert response.status_code == 302
    assert post_json(api, "/track", {"business_id": COLON, **EVENT}).status_code == 201


def test_create_api_key_refuses_an_id_that_breaks_the_rule() -> None:
    with pytest.raises(CommandError, match="may hold only letters, digits"):
        call_command("create_api_key", ODD, "--name", "x", "--scope", "ingest", "--create-business", stdout=StringIO(),
                     stderr=StringIO())
    assert not Business.objects.filter(pk=ODD).exists()


def test_a_key_of_a_business_stored_before_the_rule_cannot_ingest(api: Client, make_key) -> None:
    # As an older release let the admin store it, with a key made then.
    legacy = Business.objects.create(id=ODD)
    key, raw = make_key(Business.objects.create(id="placeholder"), can_ingest=True, can_read=True)
    ApiKey.objects.filter(pk=key.pk).update(business=legacy)
    headers = {"Authorization": f"Bearer {raw}"}
    without_id = post_json(api, "/track", EVENT, **headers)
    assert without_id.status_code == 400
    assert "business_id" in without_id.json()["errors"]
    batch = post_json(api, "/track/batch", {"events": [EVENT]}, **headers)
    assert batch.json()["rejected"] == 1
    assert not AIMetric.objects.exists()
    # Its analytics stay readable.
    assert api.get("/api/analytics/summary", headers=headers).status_code == 200


def test_stored_ids_that_break_the_rule_are_listed_by_the_system_check() -> None:
    Business.objects.create(id=ODD)
    Business.objects.create(id="fine-id")
    warnings = [m for m in checks.run_checks(databases=["default"]) if m.id == "metrics_app.W010"]
    assert len(warnings) == 1
    assert repr(ODD) in warnings[0].msg and "fine-id" not in warnings[0].msg
    assert not [m for m in checks.run_checks() if m.id == "metrics_app.W010"]  # only when asked to look at data


def test_the_documents_app_takes_every_id_that_track_takes(settings, tmp_path: Path) -> None:
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path
    editor = User.objects.create_superuser("editor", "editor@example.com", "pw-for-tests-only")
    client = Client()
    client.force_login(editor)
    Business.objects.create(id=COLON)
    response = client.post(
        "/admin/documents_app/document/add/",
        {"business": COLON, "file": SimpleUploadedFile("hours.txt", HOURS)},
    )
    assert response.status_code == 302
    assert (tmp_path / pipeline.RAW_DIR / COLON / "hours.txt").exists()
    assert Document.objects.get().business_id == COLON

    process, _ = pipeline.load_params(ROOT / pipeline.PARAMS_PATH)
    pipeline.process_documents(
        tmp_path / pipeline.RAW_DIR, tmp_path / "emb.json", tmp_path / "m.json", process, cache_dir=tmp_path / "c"
    )
    report = pipeline.json.loads((tmp_path / "emb.json").read_text())["documents"]
    assert [(d["business_id"], d["status"]) for d in report] == [(COLON, "processed")]


def test_the_documents_app_refuses_uploads_for_a_stored_id_that_breaks_the_rule(settings, tmp_path: Path) -> None:
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path
    client = Client()
    client.force_login(User.objects.create_superuser("editor", "editor@example.com", "pw-for-tests-only"))
    Business.objects.create(id=ODD)
    response = client.post(
        "/admin/documents_app/document/add/",
        {"business": ODD, "file": SimpleUploadedFile("hours.txt", b"Hours\nNine to five.\n")},
    )
    assert response.status_code == 200
    assert "cannot hold documents" in response.content.decode()
    assert not list(tmp_path.rglob("hours.txt"))


def test_the_knowledge_base_api_takes_every_id_that_track_takes(api: Client, settings, tmp_path: Path) -> None:
    settings.MLOPS_ALLOW_ANONYMOUS_CHAT = True
    # No knowledge base is built in this test: the id passes validation and the answer is the 404 that says so.
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path
    response = api.get("/api/knowledge-base/search", {"q": "hours", "business_id": COLON})
    assert response.status_code == 404
    assert response.json()["error"].startswith("No knowledge base is available")


def test_no_new_key_is_made_for_a_stored_id_that_breaks_the_rule(make_key) -> None:
    legacy = Business.objects.create(id=ODD)
    boss = Client()
    boss.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw-for-tests-only"))
    response = boss.post(
        "/admin/metrics_app/apikey/add/", {"business": ODD, "name": "k", "can_ingest": "on", "can_read": "on"}
    )
    assert response.status_code == 200 and "API key created" not in response.content.decode()
    with pytest.raises(ValueError, match="gets no new keys"):
        make_key(legacy, can_read=True)
    assert not ApiKey.objects.exists()
