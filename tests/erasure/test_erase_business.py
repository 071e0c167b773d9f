"""Erasing a whole business: gone from every table, the other businesses' figures as they were, and a record."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from documents_app.models import Document, PipelineRun, RunStatus
from metrics_app.analytics import totals
from metrics_app.erasure import services as erasure
from metrics_app.folding import services as folding
from metrics_app.keys import rate_limit
from metrics_app.models import (
    AIMetric,
    ApiKey,
    BookingModel,
    Business,
    DigestDelivery,
    ErasureRecord,
    Experiment,
    MetricTotals,
    OpeningException,
    OpeningHours,
    RateLimitSlot,
    StaffBusinessAccess,
)
from tests.analytics.helpers import (
    BUSINESSES,
    NOW,
    expected_event_figures,
    make_events,
    rollup_tables,
    rows,
    select,
    store,
)
from tests.analytics.test_analytics_api import PERIOD, START, assert_figures
from tests.helpers import fold_all
from tests.monitoring.helpers import samples

pytestmark = pytest.mark.django_db

VICTIM = "kolkata-clinic"
OTHERS = sorted(set(BUSINESSES) - {VICTIM})
ERASER_PERMS = ("metrics_app.view_business", "metrics_app.change_business", "metrics_app.add_erasurerecord")


@pytest.fixture(autouse=True)
def documents_root(settings, tmp_path: Path) -> Path:
    """A pipeline root of the test's own (no DVC here), so no erasure touches the repository's documents."""
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path
    return tmp_path


@pytest.fixture(params=["folded", "half-folded"])
def world(request, db, documents_root: Path, make_key, staff_factory) -> dict[str, Any]:
    """Four businesses' traffic, and everything else a business can hold, for each of them."""
    for business_id, tz in BUSINESSES.items():
        Business.objects.create(id=business_id, time_zone=tz)
    payloads = make_events(seed=5)
    store(payloads)
    if request.param == "folded":
        fold_all()
    else:  # the folder halfway: some of every business's events are in the rollups, the rest not yet
        folding.fold_pending(until=sorted(AIMetric.objects.values_list("id", flat=True))[len(payloads) // 2])
    for business in Business.objects.all():
        key, _ = make_key(business)
        rate_limit.count_request(key, 1000, 10)
        OpeningHours.objects.create(business=business, weekday=1, opens=datetime.time(9), closes=datetime.time(17))
        OpeningException.objects.create(business=business, date=datetime.date(2026, 12, 25), note="Christmas")
        Experiment.objects.create(business=business, name="prompt-test", variant_a="v1", variant_b="v2")
        DigestDelivery.objects.create(business=business, week_start=datetime.date(2026, 3, 9))
        BookingModel.objects.create(business=business, status="not_enough_data", reason="too few")
        staff_factory(f"owner-{business.pk}", businesses=[business.pk])
        folder = documents_root / "data/raw/business_documents" / business.pk
        folder.mkdir(parents=True)
        (folder / "faq.md").write_text(f"# FAQ\nWe are {business.pk}.\n")
        Document.objects.create(business=business, path=f"{business.pk}/faq.md", name="faq.md", format="md",
                                size_bytes=20)
    return {"payloads": payloads, "folded": request.param}


def figures(api: Client, headers: dict[str, str], business_id: str | None) -> dict[str, Any]:
    """What the analytics API answers for a business (or for all), over the data's whole period."""
    scope = {} if business_id is None else {"business_id": business_id}
    answers = {}
    for path, extra in (("summary", {}), ("timeseries", {"bucket": "hour"}), ("funnel", {}),
                        ("breakdown/intent", {"limit": 100}), ("breakdown/model", {"limit": 100})):
        response = api.get(f"/api/analytics/{path}", {**PERIOD, **scope, **extra}, headers=headers)
        assert response.status_code == 200, (path, response.content)
        answers[path] = response.json()
    return answers


def prometheus_totals(business_id: str | None = None) -> set[tuple[Any, ...]]:
    rows_of = MetricTotals.objects.all() if business_id is None else MetricTotals.objects.filter(
        business_id=business_id)
    return {(*row[:-1], repr(row[-1])) for row in rows_of.values_list(
        "business_id", "model_name", "intent", "response_type", "events", "failed", "tokens", "client_cost",
        "requested", "booked", "handoffs", "histograms")}


def holds_nothing_of(business_id: str) -> None:
    """No row of any table of either app names the business, except its erasure records."""
    for label in ("metrics_app", "documents_app"):
        for model in apps.get_app_config(label).get_models():
            if model is ErasureRecord:
                continue
            if any(f.attname == "business_id" for f in model._meta.concrete_fields):
                assert not model._default_manager.filter(business_id=business_id).exists(), model.__name__
            if model is PipelineRun:
                assert not any(business_id in str(run.metrics) for run in model.objects.all())
    assert not Business.objects.filter(pk=business_id).exists()
    assert not RateLimitSlot.objects.filter(key__business_id=business_id).exists()


def scraped(api: Client) -> dict[str, set[tuple[Any, ...]]]:
    """The /metrics samples that carry a business label, per business label value."""
    response = api.get("/metrics")
    assert response.status_code == 200
    found: dict[str, set[tuple[Any, ...]]] = {}
    for name, series in samples(response.content.decode()).items():
        for labels, value in series:
            if "business_id" in labels:
                found.setdefault(labels["business_id"], set()).add((name, tuple(sorted(labels.items())), value))
    return found


@pytest.fixture
def agency(make_key) -> dict[str, str]:
    _, raw = make_key(None, can_ingest=False, can_read=True)
    return {"Authorization": f"Bearer {raw}"}


def test_a_business_is_gone_from_every_table_and_the_others_answer_as_before(
    world, superuser, api, agency, documents_root
):
    before = {business_id: figures(api, agency, business_id) for business_id in OTHERS}
    totals_before = {business_id: prometheus_totals(business_id) for business_id in OTHERS}
    scraped_before = scraped(api)
    assert VICTIM in scraped_before
    kept_rollups = [[row for row in table if row[0] != VICTIM and row[0] != "*"] for table in rollup_tables()]

    done = erasure.erase_business(superuser, VICTIM, reason="the business closed")

    holds_nothing_of(VICTIM)
    assert not (documents_root / "data/raw/business_documents" / VICTIM).exists()
    assert (documents_root / "data/raw/business_documents" / OTHERS[0] / "faq.md").exists()
    # Every other business answers as it did, from its rows and from its unfolded tail alike.
    assert {business_id: figures(api, agency, business_id) for business_id in OTHERS} == before
    assert {business_id: prometheus_totals(business_id) for business_id in OTHERS} == totals_before
    # /metrics: the business's series are gone, every other business's are as they were.
    scraped_after = scraped(api)
    assert VICTIM not in scraped_after
    assert {b: scraped_after.get(b) for b in OTHERS} == {b: scraped_before.get(b) for b in OTHERS}
    assert [[row for row in table if row[0] != "*"] for table in rollup_tables()] == kept_rollups
    # The "*" figures are those of the events left: the API's answer equals one computed from the raw rows...
    summary = api.get("/api/analytics/summary", PERIOD, headers=agency).json()["summary"]
    assert_figures(summary, expected_event_figures(select(rows(), START, NOW)), sketch=True)
    all_after = figures(api, agency, None)
    after, prometheus_after = rollup_tables(), prometheus_totals()
    # ...and every rollup, sketch and total equals what a rebuild from the remaining raw rows makes.
    folding.rebuild()
    assert rollup_tables() == after
    totals.rebuild()
    assert prometheus_totals() == prometheus_after
    assert figures(api, agency, None) == all_after
    expected_events = sum(p["business_id"] == VICTIM for p in world["payloads"])
    assert done.counts["events"] == expected_events > 0
    assert (done.counts["api_keys"], done.counts["documents"], done.counts["document_files"],
            done.counts["experiments"], done.counts["staff_grants"], done.counts["businesses"]) == (1, 1, 1, 1, 1, 1)


def test_the_record_says_who_erased_the_business_when_and_how_much(world, superuser):
    erasure.erase_business(superuser, VICTIM, reason="the business closed")
    (record,) = ErasureRecord.objects.all()
    assert (record.kind, record.business_id, record.erased_by, record.erased_by_name, record.reason,
            record.conversation_digest) == ("business", VICTIM, superuser, "boss", "the business closed", "")
    assert timezone.now() - record.erased_at < datetime.timedelta(minutes=1)
    assert record.events == sum(p["business_id"] == VICTIM for p in world["payloads"])
    assert record.erased["conversations"] == record.conversations > 0
    assert all(isinstance(count, int) for count in record.erased.values())  # counts, never the data
    assert "We are" not in repr(record.erased)


def test_only_a_person_who_may_write_the_business_erases_it_and_nothing_changes_otherwise(
    world, staff_factory, make_key
):
    events = AIMetric.objects.count()
    stranger = staff_factory("stranger", businesses=[OTHERS[0]])
    reader, _ = make_key(Business.objects.get(pk=VICTIM), can_ingest=False, can_read=True)
    writer, _ = make_key(Business.objects.get(pk=VICTIM))
    for who in (stranger, reader, writer):
        with pytest.raises(erasure.ErasureRefused):
            erasure.erase_business(who, VICTIM)
    with pytest.raises(erasure.ErasureRefused):
        erasure.erase_business(staff_factory("owner", businesses=[VICTIM]), "no-such-business")
    assert AIMetric.objects.count() == events
    assert Business.objects.filter(pk=VICTIM).exists() and not ErasureRecord.objects.exists()


def _action(client: Client, ids: list[str], **extra: str) -> Any:
    return client.post("/admin/metrics_app/business/",
                       {"action": "erase_selected", "_selected_action": ids, **extra})


def test_the_admin_names_the_businesses_and_their_counts_first_then_erases(
    world, staff_factory, logged_in: Callable[..., Client]
):
    eraser = logged_in(staff_factory("eraser", businesses=[VICTIM], perms=ERASER_PERMS))
    asked = _action(eraser, [VICTIM])
    page = asked.content.decode()
    events = AIMetric.objects.filter(business_id=VICTIM).count()
    assert asked.status_code == 200 and "Erase them everywhere" in page and VICTIM in page
    assert f"{events} events" in page and "1 documents" in page
    assert Business.objects.filter(pk=VICTIM).exists()
    done = _action(eraser, [VICTIM], confirmed="yes", reason="asked in writing")
    assert done.status_code == 302
    holds_nothing_of(VICTIM)
    assert ErasureRecord.objects.get().reason == "asked in writing"
    # A business the user does not see is not in their list, so the action cannot reach it.
    assert _action(eraser, [OTHERS[0]], confirmed="yes").status_code == 302
    assert Business.objects.filter(pk=OTHERS[0]).exists()
    # Without the permission the action is not offered.
    viewer = logged_in(staff_factory("viewer", businesses=[OTHERS[0]]))
    listing = viewer.get("/admin/metrics_app/business/")
    assert listing.status_code == 200 and "erase_selected" not in listing.content.decode()
    assert _action(viewer, ["not a business id"]).status_code in (200, 302, 400)


def test_the_command_prints_what_goes_and_a_dry_run_changes_nothing(world, staff_factory):
    staff_factory("eraser", businesses=[VICTIM], perms=ERASER_PERMS)
    staff_factory("onlooker", businesses=[VICTIM])
    staff_factory("stranger", businesses=[OTHERS[0]], perms=ERASER_PERMS)
    staff_factory("agency", businesses=None, perms=ERASER_PERMS)
    events = AIMetric.objects.count()
    out = StringIO()
    call_command("erase_business", VICTIM, "--user", "eraser", "--dry-run", stdout=out)
    expected = AIMetric.objects.filter(business_id=VICTIM).count()
    assert f"events: {expected}" in out.getvalue() and "Dry run: nothing was erased." in out.getvalue()
    assert AIMetric.objects.count() == events and not ErasureRecord.objects.exists()
    for args, message in (((VICTIM, "--user", "nobody"), "no user named"),
                          (("no-such-business", "--user", "agency"), "No such business"),
                          (("no-such-business", "--user", "eraser"), "may not erase that business"),
                          ((VICTIM, "--user", "onlooker"), "may not erase"),
                          ((VICTIM, "--user", "stranger"), "may not erase")):
        with pytest.raises(CommandError, match=message):
            call_command("erase_business", *args, "--yes", stdout=StringIO())
    assert AIMetric.objects.count() == events
    out = StringIO()
    call_command("erase_business", VICTIM, "--user", "eraser", "--yes", "--reason", "closed", stdout=out)
    assert f"Erased {VICTIM} everywhere: {expected} event(s)" in out.getvalue()
    holds_nothing_of(VICTIM)
    assert ErasureRecord.objects.get().erased_by_name == "eraser"


def test_an_erasure_waits_for_no_pipeline_run_and_refuses_while_one_is_active(world, superuser):
    PipelineRun.objects.create(status=RunStatus.RUNNING)
    with pytest.raises(erasure.ErasureRefused, match="queued or running"):
        erasure.erase_business(superuser, VICTIM)
    assert Business.objects.filter(pk=VICTIM).exists() and ApiKey.objects.filter(business_id=VICTIM).exists()
    assert StaffBusinessAccess.objects.filter(business_id=VICTIM).exists()


@pytest.mark.parametrize("business_id", ["../outside", "..", "", "x" * 500, "kolkata-clinic/../outside"])
def test_an_id_that_names_a_path_erases_no_folder_outside_the_documents(superuser, documents_root, business_id):
    outside = documents_root / "data/raw/outside"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("not a business's")
    with pytest.raises(erasure.ErasureRefused, match="No such business"):
        erasure.erase_business(superuser, business_id)
    assert (outside / "keep.txt").exists()
