"""Tenancy at every door: staff limited to some businesses reach only those, and limited stays limited.

One rule (metrics_app.access) decides for the analytics API, the admin, the
documents admin, the knowledge-base API and pipeline runs; these tests go in
through each door as a user would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from documents_app import services
from documents_app.models import Document, PipelineRun, RunStatus
from documents_app.pipeline import stages as pipeline
from metrics_app.models import Business, StaffBusinessAccess
from tests.helpers import ROOT, post_json, staff_user

pytestmark = pytest.mark.django_db

DOCUMENT_PERMS = ("add_document", "view_document", "delete_document", "view_pipelinerun", "run_pipeline")
A_TEXT = b"Parking\nThere is free parking behind the Alpha building for every patient.\n"
B_TEXT = b"Secret Prices\nBravo's private rate for the night shift is forty dollars an hour.\n"
DOCUMENTS_URL = "/admin/documents_app/document/"


def _client(user: User, *codenames: str) -> Client:
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def root(settings, tmp_path: Path) -> Path:
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def two_businesses(root: Path) -> dict[str, Document]:
    """biz-a and biz-b, each with one stored document, and a knowledge base built from both."""
    documents = {}
    for business_id, text in (("biz-a", A_TEXT), ("biz-b", B_TEXT)):
        business = Business.objects.create(id=business_id)
        documents[business_id] = services.store_document(
            business, SimpleUploadedFile(f"{business_id}-notes.txt", text)
        )
    process, update = pipeline.load_params(ROOT / pipeline.PARAMS_PATH)
    pipeline.process_documents(
        root / pipeline.RAW_DIR, root / pipeline.EMBEDDINGS_PATH, root / "m1.json", process, cache_dir=root / "cache"
    )
    pipeline.update_knowledge_base(root / pipeline.EMBEDDINGS_PATH, root / pipeline.KB_PATH, root / "m2.json", update)
    return documents


@pytest.fixture
def limited(two_businesses: dict[str, Document]) -> User:
    return staff_user("alice", businesses=["biz-a"])


# --- The documents admin.


def test_limited_staff_list_and_open_only_their_businesses_documents(limited: User, two_businesses) -> None:
    client = _client(limited, *DOCUMENT_PERMS)
    listing = client.get(DOCUMENTS_URL).content.decode()
    assert "biz-a-notes.txt" in listing
    assert "biz-b-notes.txt" not in listing
    assert "biz-b" not in listing  # not even as a filter choice

    other = two_businesses["biz-b"]
    change = client.get(f"{DOCUMENTS_URL}{other.pk}/change/", follow=True)
    assert "biz-b-notes.txt" not in change.content.decode()
    assert client.get(f"{DOCUMENTS_URL}{two_businesses['biz-a'].pk}/change/").status_code == 200


def test_limited_staff_cannot_upload_into_another_business(limited: User, two_businesses, root: Path) -> None:
    client = _client(limited, *DOCUMENT_PERMS)
    form = client.get(f"{DOCUMENTS_URL}add/").content.decode()
    assert 'value="biz-a"' in form
    assert 'value="biz-b"' not in form

    response = client.post(
        f"{DOCUMENTS_URL}add/", {"business": "biz-b", "file": SimpleUploadedFile("planted.txt", A_TEXT)}
    )
    assert response.status_code == 200  # the form again, with the error
    assert "Select a valid choice" in response.content.decode()
    assert not (root / pipeline.RAW_DIR / "biz-b" / "planted.txt").exists()
    assert not Document.objects.filter(name="planted.txt").exists()


def test_limited_staff_cannot_delete_another_business_document(limited: User, two_businesses, root: Path) -> None:
    client = _client(limited, *DOCUMENT_PERMS)
    other = two_businesses["biz-b"]
    client.post(f"{DOCUMENTS_URL}{other.pk}/delete/", {"post": "yes"})
    client.post(DOCUMENTS_URL, {"action": "delete_selected", "_selected_action": [other.pk], "post": "yes"})
    assert Document.objects.filter(pk=other.pk).exists()
    assert (root / pipeline.RAW_DIR / other.path).exists()


def test_a_pipeline_run_shows_limited_staff_only_their_businesses(limited: User, two_businesses, root: Path) -> None:
    run = PipelineRun.objects.create(
        status=RunStatus.SUCCEEDED,
        active=False,
        log="processing biz-b/biz-b-notes.txt\nprocessing biz-a/biz-a-notes.txt\n",
        metrics={
            "process_documents": {"businesses": 2, "documents_processed": 2},
            "by_business": services.business_report(services.processed_documents(root / pipeline.EMBEDDINGS_PATH)),
        },
    )
    page = _client(limited, *DOCUMENT_PERMS).get(f"/admin/documents_app/pipelinerun/{run.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "biz-a" in text and "documents_processed" in text
    assert "biz-b" not in text
    assert "shown only to staff who see every business" in text

    everything = _client(staff_user("root-ops"), *DOCUMENT_PERMS).get(
        f"/admin/documents_app/pipelinerun/{run.pk}/change/"
    )
    assert "biz-b/biz-b-notes.txt" in everything.content.decode()


def test_the_run_report_counts_each_business_documents_and_chunks(two_businesses, root: Path) -> None:
    report = services.business_report(services.processed_documents(root / pipeline.EMBEDDINGS_PATH))
    kb = pipeline.json.loads((root / pipeline.KB_PATH).read_text())
    chunks_per_business = {b: sum(1 for c in kb["chunks"] if c["business_id"] == b) for b in ("biz-a", "biz-b")}
    assert set(report) == {"biz-a", "biz-b"}
    for business_id, part in report.items():
        assert part["documents_processed"] == 1 and part["documents_skipped"] == 0
        assert part["chunks"] >= chunks_per_business[business_id] >= 1


# --- The knowledge-base API with a staff session.


def test_limited_staff_search_only_their_businesses_knowledge(limited: User, two_businesses, settings) -> None:
    settings.MLOPS_ALLOW_ANONYMOUS_CHAT = False
    client = _client(limited)
    refused = client.get("/api/knowledge-base/search", {"q": "night shift rate", "business_id": "biz-b"})
    assert refused.status_code == 403
    assert "Bravo" not in refused.content.decode()
    assert set(refused.json()) == {"error", "errors"}

    own = client.get("/api/knowledge-base/search", {"q": "parking", "business_id": "biz-a"})
    assert own.status_code == 200
    assert "free parking" in own.json()["results"][0]["text"]

    summary = client.get("/api/knowledge-base/").json()
    assert set(summary["businesses"]) == {"biz-a"}
    assert client.get("/api/knowledge-base/", {"business_id": "biz-b"}).status_code == 403


def test_staff_who_see_every_business_get_every_business_in_the_summary(two_businesses) -> None:
    summary = _client(staff_user("root-ops")).get("/api/knowledge-base/").json()
    assert set(summary["businesses"]) == {"biz-a", "biz-b"}


# --- Limited stays limited.


def _summary_status(user: User) -> int:
    return _client(user).get("/api/analytics/summary").status_code


def test_deleting_the_only_granted_business_leaves_the_user_seeing_nothing(limited: User, two_businesses) -> None:
    assert _summary_status(limited) == 200
    Document.objects.filter(business_id="biz-a").delete()
    Business.objects.filter(pk="biz-a").delete()  # the access row cascades
    assert not StaffBusinessAccess.objects.filter(user=limited).exists()
    assert _summary_status(limited) == 403
    client = _client(limited, *DOCUMENT_PERMS, "view_aimetric")
    assert "biz-b-notes.txt" not in client.get(DOCUMENTS_URL).content.decode()
    search = client.get("/api/knowledge-base/search", {"q": "night shift rate", "business_id": "biz-b"})
    assert search.status_code == 403


def test_removing_the_last_grant_leaves_the_user_seeing_nothing(limited: User, two_businesses) -> None:
    StaffBusinessAccess.objects.filter(user=limited).delete()
    assert _summary_status(limited) == 403
    assert "biz-b" not in _client(limited, *DOCUMENT_PERMS).get(DOCUMENTS_URL).content.decode()


def test_a_new_staff_user_sees_nothing_until_granted(two_businesses) -> None:
    newcomer = User.objects.create_user("newcomer", password="pw-for-tests-only", is_staff=True)
    assert _summary_status(newcomer) == 403
    StaffBusinessAccess.objects.create(user=newcomer, business=None)
    assert _summary_status(newcomer) == 200


def test_staff_without_a_grant_cannot_record_outcomes(two_businesses) -> None:
    newcomer = User.objects.create_user("newcomer", password="pw-for-tests-only", is_staff=True)
    response = post_json(
        _client(newcomer), "/api/conversations/outcome",
        {"business_id": "biz-a", "conversation_id": "c-1", "appointment_booked": True},
    )
    assert response.status_code == 403


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_gives_staff_who_saw_everything_an_explicit_grant() -> None:
    executor = MigrationExecutor(connection)
    before = [("metrics_app", "0006_analytics_rollups")]
    after = [("metrics_app", "0007_staff_access_explicit_grants")]
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    OldUser = old.get_model("auth", "User")
    OldBusiness = old.get_model("metrics_app", "Business")
    OldAccess = old.get_model("metrics_app", "StaffBusinessAccess")
    everyone = OldUser.objects.create(username="veteran", is_staff=True)
    narrow = OldUser.objects.create(username="narrow", is_staff=True)
    OldAccess.objects.create(user=narrow, business=OldBusiness.objects.create(id="biz-a"))
    OldUser.objects.create(username="customer", is_staff=False)

    executor = MigrationExecutor(connection)
    executor.migrate(after)
    new = executor.loader.project_state(after).apps
    grants = new.get_model("metrics_app", "StaffBusinessAccess").objects
    assert list(grants.filter(user_id=everyone.pk).values_list("business_id", flat=True)) == [None]
    assert list(grants.filter(user_id=narrow.pk).values_list("business_id", flat=True)) == ["biz-a"]
    assert grants.count() == 2

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


# --- Doors that are not split by business.


def test_limited_staff_cannot_probe_run_logs_or_metrics_through_list_lookups(limited: User, two_businesses) -> None:
    PipelineRun.objects.create(
        status=RunStatus.SUCCEEDED, active=False, log="processing biz-b/secret-prices.txt\n",
        metrics={"by_business": {"biz-b": {"chunks": 3}}},
    )
    client = _client(limited, *DOCUMENT_PERMS)
    url = "/admin/documents_app/pipelinerun/"
    for probe in ({"log__contains": "biz-b/secret"}, {"metrics__icontains": "biz-b"},
                  {"metrics__by_business__has_key": "biz-b"}, {"error__startswith": ""}):
        assert client.get(url, probe).status_code == 400, probe
    assert client.get(url, {"status__exact": "succeeded"}).context["cl"].result_count == 1
    everything = _client(staff_user("root-ops"), *DOCUMENT_PERMS)
    assert everything.get(url, {"log__contains": "biz-b/secret"}).context["cl"].result_count == 1


def test_limited_staff_cannot_start_or_cancel_a_run_that_covers_every_business(limited: User, two_businesses) -> None:
    queued = PipelineRun.objects.create()
    client = _client(limited, *DOCUMENT_PERMS)
    assert client.get("/admin/documents_app/pipelinerun/run/").status_code == 403
    assert client.post("/admin/documents_app/pipelinerun/run/", {"stage": "all"}).status_code == 403
    client.post("/admin/documents_app/pipelinerun/", {"action": "cancel_queued_runs", "_selected_action": [queued.pk]})
    queued.refresh_from_db()
    assert queued.status == RunStatus.QUEUED
    assert PipelineRun.objects.count() == 1


def test_limited_staff_cannot_add_businesses_or_learn_which_ids_exist(limited: User, two_businesses) -> None:
    client = _client(limited, "add_business", "view_business")
    form = {"name": "probe", "time_zone": "UTC", "conversation_idle_minutes": 30, "api_keys-TOTAL_FORMS": 0, "api_keys-INITIAL_FORMS": 0}
    taken = client.post("/admin/metrics_app/business/add/", {"id": "biz-b", **form})
    free = client.post("/admin/metrics_app/business/add/", {"id": "biz-zz", **form})
    assert taken.status_code == free.status_code == 403
    assert not Business.objects.filter(pk="biz-zz").exists()


def test_a_grant_names_a_business_or_ticks_every_business_explicitly(two_businesses) -> None:
    boss = Client()
    boss.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw-for-tests-only"))
    newcomer = User.objects.create_user("newcomer", password="pw-for-tests-only", is_staff=True)
    url = "/admin/metrics_app/staffbusinessaccess/add/"
    blank = boss.post(url, {"user": newcomer.pk, "business": ""})
    assert blank.status_code == 200 and "Choose a business, or tick" in blank.content.decode()
    assert not StaffBusinessAccess.objects.exists()
    assert boss.post(url, {"user": newcomer.pk, "business": "", "every_business": "on"}).status_code == 302
    assert StaffBusinessAccess.objects.get(user=newcomer).business_id is None
    assert _summary_status(newcomer) == 200
