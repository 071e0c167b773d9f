"""The console's digest downloads: the PDF and the CSV hold the raw rows' figures, and only for one's own businesses."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzzing
from hypothesis import strategies as st
from pypdf import PdfReader

from metrics_app.models import Business
from tests.digests.helpers import BUSINESS, WEEK, expected, shown

URL = "/admin/metrics_app/digestdelivery/download/"
FIGURE_LINES = {
    "replies": "Replies", "conversations": "Conversations", "bookings": "Bookings (booked conversations)",
    "after_hours_conversations": "After hours: conversations", "after_hours_requests": "After hours: booking requests",
    "after_hours_bookings": "After hours: bookings", "handoffs": "Handoffs to a person (conversations)",
    "cost_usd": "Cost (USD)", "cost_per_booking_usd": "Cost per booking (USD)",
    "unpriced_replies": "Replies without a price (not in the cost)",
}


@pytest.fixture
def staff_client(folded_business, staff_factory, logged_in):
    Business.objects.create(id="other-clinic", time_zone="UTC")
    return logged_in(staff_factory("limited", businesses=[BUSINESS]))


def _get(client, **params):
    return client.get(URL, {"business": BUSINESS, "week": WEEK.isoformat(), **params})


def test_the_pdf_holds_every_figure_of_the_raw_rows(staff_client):
    response = _get(staff_client, format="pdf")

    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="digest-{BUSINESS}-{WEEK}.pdf"'
    reader = PdfReader(io.BytesIO(response.content))
    assert len(reader.pages) == 1
    page_text = reader.pages[0].extract_text()
    lines = page_text.splitlines()
    want = shown(expected())
    assert "Weekly digest: Harbor Dental, 02 Mar 2026 to 08 Mar 2026" in page_text
    for key, label in FIGURE_LINES.items():
        row = next(line for line in lines if line.startswith(label + " ") or line == label)
        assert row.split(label, 1)[1].split()[0] == want[key].split()[0], (key, row)
    for key in ("replies", "conversations", "bookings"):
        expected_row = f"{FIGURE_LINES[key]} {want[key]} {want[key + '_previous']} {want[key + '_change']}"
        assert expected_row in lines, (expected_row, lines)
    assert len(reader.pages[0].images) == 1  # the chart


def test_the_csv_holds_every_figure_exactly(staff_client):
    response = _get(staff_client, format="csv")

    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = {row["figure"]: row for row in csv.DictReader(io.StringIO(response.content.decode()))}
    want = expected()
    assert rows["business_id"]["this_week"] == BUSINESS and rows["week_start"]["this_week"] == "2026-03-02"
    assert rows["week_end"]["this_week"] == "2026-03-08" and rows["time_zone"]["this_week"] == "America/New_York"
    for key in ("replies", "conversations", "bookings"):
        assert int(rows[key]["this_week"]) == want[key] and int(rows[key]["last_week"]) == want[f"{key}_previous"]
        assert int(rows[key]["change"]) == want[key] - want[f"{key}_previous"]
    for key in ("after_hours_conversations", "after_hours_requests", "after_hours_bookings", "handoffs",
                "unpriced_replies"):
        assert int(rows[key]["this_week"]) == want[key], key
    assert float(rows["cost_usd"]["this_week"]) == pytest.approx(want["cost_usd"], rel=1e-9)
    assert float(rows["cost_per_booking_usd"]["this_week"]) == pytest.approx(want["cost_per_booking_usd"], rel=1e-9)
    days = [int(rows[f"replies_{d}"]["this_week"]) for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")]
    assert days == want["replies_by_day"]


def test_a_business_name_a_spreadsheet_would_run_is_written_as_text(staff_client):
    Business.objects.filter(pk=BUSINESS).update(name="=HYPERLINK(\"http://x\")")

    rows = {row["figure"]: row for row in csv.DictReader(io.StringIO(_get(staff_client, format="csv")
                                                                     .content.decode()))}

    assert rows["business"]["this_week"] == "'=HYPERLINK(\"http://x\")"


def test_a_business_in_another_script_still_gets_a_pdf(staff_client):
    Business.objects.filter(pk=BUSINESS).update(name="港湾牙科 Harbor")

    response = _get(staff_client, format="pdf")

    assert response.status_code == 200 and "Harbor" in PdfReader(io.BytesIO(response.content)).pages[0].extract_text()


@pytest.mark.parametrize("business", ["other-clinic", "no-such-business", "x" * 400])
@pytest.mark.parametrize("wanted", ["pdf", "csv", "html", ""])
def test_a_business_not_granted_answers_404_and_no_figure(staff_client, business, wanted):
    response = staff_client.get(URL, {"business": business, "week": WEEK.isoformat(), "format": wanted})

    assert response.status_code == 404
    assert b"Weekly digest:" not in response.content


def test_staff_who_see_every_business_download_any(folded_business, superuser, logged_in):
    response = _get(logged_in(superuser), format="csv")

    assert response.status_code == 200 and BUSINESS in response.content.decode()


def test_someone_not_staff_is_sent_to_the_login(folded_business, client):
    response = _get(client, format="pdf")

    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.parametrize(("week", "message"), [
    ("2026-02-30", "is not a date"),
    ("next monday", "is not a date"),
    ("9999-12-31", "has not ended yet"),
    ("1999-12-31", "before 2000-01-03"),
    ("", None),
])
def test_a_bad_week_is_a_clear_message_never_a_500(staff_client, week, message):
    response = staff_client.get(URL, {"business": BUSINESS, "week": week, "format": "pdf"})

    if message is None:  # no week: the last one ended
        assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
        return
    assert response.status_code == 400
    assert message in response.content.decode()


def test_an_unknown_format_is_a_clear_message(staff_client):
    response = _get(staff_client, format="docx")

    assert response.status_code == 400 and "Unknown format" in response.content.decode()


def test_the_form_offers_only_the_businesses_the_user_may_see(staff_client):
    response = staff_client.get(URL)

    page = response.content.decode()
    assert response.status_code == 200 and f'value="{BUSINESS}"' in page and "other-clinic" not in page


def test_the_deliveries_list_shows_only_the_user_s_businesses(staff_client):
    from metrics_app.models import DigestDelivery, DigestStatus

    DigestDelivery.objects.create(business_id=BUSINESS, week_start=WEEK, status=DigestStatus.SENT)
    DigestDelivery.objects.create(business_id="other-clinic", week_start=WEEK, status=DigestStatus.SENT)

    page = staff_client.get("/admin/metrics_app/digestdelivery/").content.decode()

    assert BUSINESS in page and "other-clinic" not in page and "Download a digest" in page


@pytest.mark.parametrize("params", [
    {"business": "harbor-dental\x00", "format": "pdf"},
    {"business": BUSINESS, "week": "2026-03-02\x00", "format": "csv"},
    {"business": BUSINESS, "week": "٢٠٢٦-٠٣-٠٢", "format": "pdf"},
    {"business": BUSINESS, "week": "2026-03-02T25:00", "format": "pdf"},
    {"business": BUSINESS, "week": "9" * 5000, "format": "csv"},
    {"business": "ü" * 300, "format": "html"},
    {"business": BUSINESS, "format": "pdf" * 1000},
    {"business": ["harbor-dental", "other-clinic"], "format": "csv"},
])
def test_odd_input_never_answers_500(staff_client, params):
    response = staff_client.get(URL, params)

    assert response.status_code in (200, 400, 404), response.status_code


def test_only_a_failed_delivery_can_be_deleted_so_that_a_sent_week_never_goes_twice(folded_business, superuser,
                                                                                      logged_in):
    from metrics_app.models import DigestDelivery, DigestStatus

    sent = DigestDelivery.objects.create(business_id=BUSINESS, week_start=WEEK, status=DigestStatus.SENT)
    failed = DigestDelivery.objects.create(business_id=BUSINESS, week_start=WEEK.replace(day=9),
                                           status=DigestStatus.FAILED)
    client = logged_in(superuser)

    assert client.post(f"/admin/metrics_app/digestdelivery/{sent.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"/admin/metrics_app/digestdelivery/{failed.pk}/delete/", {"post": "yes"}).status_code == 302
    assert list(DigestDelivery.objects.values_list("pk", flat=True)) == [sent.pk]


@fuzzing(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(query=st.dictionaries(
    st.sampled_from(["business", "week", "format", "status", "week_start__year", "week_start__month", "q", "o", "p"]),
    st.one_of(st.sampled_from(["", "\x00", BUSINESS, "other-clinic", "2026-03-02", "2026-03-09", "9999-12-31",
                               "0001-01-01", "pdf", "csv", "html", "sent", "failed", "-1", "1e309"]),
              st.text(max_size=30)),
    max_size=4,
))
def test_fuzzed_queries_to_the_digest_pages_never_answer_500(staff_client, query):
    for page in (URL, "/admin/metrics_app/digestdelivery/"):
        response = staff_client.get(page, query)
        assert response.status_code < 500, (page, query, response.status_code)
        if response.status_code == 200 and response["Content-Type"] != "text/html; charset=utf-8":
            assert query.get("business") == BUSINESS  # a download is only ever of the user's own business
