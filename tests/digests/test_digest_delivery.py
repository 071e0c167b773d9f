"""Who gets the weekly digest, what the mail holds, and that each (business, week) goes out once."""

from __future__ import annotations

import email
import io
import re
import threading
from datetime import timedelta
from email.message import Message

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connection
from PIL import Image

from metrics_app.digests import schedule, services
from metrics_app.models import Business, DigestDelivery, DigestStatus, StaffBusinessAccess
from tests.digests.helpers import BUSINESS, NOW, WEEK, expected, shown
from tests.helpers import on_postgres, staff_user

OTHER = "other-clinic"


class RefusingBackend(BaseEmailBackend):
    """A mail server that is down."""

    def send_messages(self, email_messages):
        raise ConnectionRefusedError("the mail server is down")


@pytest.fixture
def people(folded_business):
    """Staff of two businesses, and the users the rule leaves out."""
    Business.objects.create(id=OTHER, time_zone="Europe/London")
    found = {
        "alice": staff_user("alice", businesses=[BUSINESS]),
        "bob": staff_user("bob", businesses=[BUSINESS, OTHER]),
        "agency": staff_user("agency"),  # a grant of every business subscribes to none
        "inactive": staff_user("inactive", businesses=[BUSINESS]),
        "no-address": staff_user("no-address", businesses=[BUSINESS]),
        "not-staff": staff_user("not-staff", businesses=[BUSINESS]),
    }
    User.objects.filter(username="inactive").update(is_active=False)
    User.objects.filter(username="no-address").update(email="")
    User.objects.filter(username="not-staff").update(is_staff=False)
    found["boss"] = User.objects.create_superuser("boss", "boss@example.com", "pw-for-tests-only")
    found["owner"] = User.objects.create_superuser("owner", "owner@example.com", "pw-for-tests-only")
    StaffBusinessAccess.objects.create(user=found["owner"], business_id=BUSINESS)  # a superuser who subscribed
    return found


def _by_recipient(outbox) -> dict[str, list]:
    found: dict[str, list] = {}
    for message in outbox:
        assert len(message.to) == 1 and not message.cc and not message.bcc
        found.setdefault(message.to[0], []).append(message)
    return found


def test_each_recipient_gets_one_message_of_each_business_granted_to_them_by_name(people, mailoutbox):
    result = services.send_digests(now=NOW)

    received = _by_recipient(mailoutbox)
    assert sorted(received) == ["alice@example.com", "bob@example.com", "owner@example.com"]
    assert result.digests == 2 and result.messages == 4
    assert [m.subject for m in received["alice@example.com"]] == [
        "Weekly digest: Harbor Dental, 02 Mar 2026 to 08 Mar 2026"]
    assert sorted(m.subject.split(",")[0] for m in received["bob@example.com"]) == [
        "Weekly digest: Harbor Dental", "Weekly digest: other-clinic"]
    for message in mailoutbox:
        other = OTHER if "Harbor" in message.subject else BUSINESS
        assert other not in message.body and other not in message.alternatives[0][0]


def test_a_revoked_grant_stops_the_mail_even_after_the_recipients_were_listed(people, mailoutbox):
    users = services.recipients(BUSINESS)
    assert [u.username for u in users] == ["alice", "bob", "owner"]
    StaffBusinessAccess.objects.filter(user=people["alice"]).delete()
    delivery = services.claim(Business.objects.get(pk=BUSINESS), WEEK, NOW)
    assert delivery is not None

    sent = services.deliver(delivery, services.weekly_digest(Business.objects.get(pk=BUSINESS), WEEK), users)

    assert sent == 2 and sorted(m.to[0] for m in mailoutbox) == ["bob@example.com", "owner@example.com"]
    assert services.recipients(BUSINESS) == [people["bob"], people["owner"]]


def test_a_grant_with_the_digest_unticked_keeps_access_and_stops_the_mail(people, mailoutbox):
    StaffBusinessAccess.objects.filter(user=people["bob"], business_id=OTHER).update(weekly_digest=False)

    result = services.send_digests(now=NOW)

    assert result.digests == 1 and all(OTHER not in m.subject for m in mailoutbox)
    assert len(mailoutbox) == 3 and services.recipients(OTHER) == []


def _parts(message) -> tuple[Message, Message, Message]:
    parsed = email.message_from_bytes(message.message().as_bytes())
    assert parsed.get_content_type() == "multipart/related"
    found = {part.get_content_type(): part for part in parsed.walk()}
    return found["text/plain"], found["text/html"], found["image/png"]


def test_the_mail_has_a_text_part_and_an_html_part_showing_the_chart_inline_as_a_real_png(people, mailoutbox):
    services.send_digests([Business.objects.get(pk=BUSINESS)], now=NOW)

    text, html, image = _parts(mailoutbox[0])
    cid = image["Content-ID"].strip("<>")
    page = html.get_payload(decode=True).decode()
    assert f'src="cid:{cid}"' in page
    assert image.get_content_disposition() == "inline"
    png = image.get_payload(decode=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(png)).verify()
    assert Image.open(io.BytesIO(png)).size == (640, 280)
    want = shown(expected())
    body = text.get_payload(decode=True).decode()
    for key, label in (("replies", "Replies"), ("conversations", "Conversations"),
                       ("bookings", "Bookings (booked conversations)")):
        assert f"{label}: {want[key]} (last week {want[key + '_previous']}, {want[key + '_change']})" in body
    assert f"Cost (USD): {want['cost_usd']}" in body
    assert f"Cost per booking (USD): {want['cost_per_booking_usd']}" in body
    assert f"After hours: conversations: {want['after_hours_conversations']}" in body


def test_a_second_run_or_a_restart_sends_nothing_more(people, mailoutbox):
    first = services.send_digests(now=NOW)
    second = services.send_digests(now=NOW + timedelta(hours=1))

    assert first.messages == 4 and second.messages == 0 and second.already_done == 2
    assert len(mailoutbox) == 4
    assert set(DigestDelivery.objects.values_list("status", flat=True)) == {DigestStatus.SENT}
    row = DigestDelivery.objects.get(business_id=BUSINESS)
    assert row.week_start == WEEK and sorted(row.sent_to) == sorted(u.pk for u in services.recipients(BUSINESS))


def test_a_claim_held_by_a_live_sender_is_left_alone(people, mailoutbox):
    DigestDelivery.objects.create(business_id=BUSINESS, week_start=WEEK, claimed_at=NOW - timedelta(minutes=5))

    result = services.send_digests([Business.objects.get(pk=BUSINESS)], now=NOW)

    assert result.messages == 0 and result.already_done == 1 and mailoutbox == []


def test_a_stale_claim_of_a_dead_sender_is_taken_over_and_mails_only_whom_it_had_not(people, mailoutbox):
    DigestDelivery.objects.create(business_id=BUSINESS, week_start=WEEK, claimed_at=NOW - timedelta(hours=2),
                                  sent_to=[people["alice"].pk])

    result = services.send_digests([Business.objects.get(pk=BUSINESS)], now=NOW)

    assert sorted(m.to[0] for m in mailoutbox) == ["bob@example.com", "owner@example.com"]
    row = DigestDelivery.objects.get(business_id=BUSINESS)
    assert result.messages == 2 and row.status == DigestStatus.SENT and row.attempts == 2


def test_a_refused_send_is_recorded_and_tried_again_at_most_three_times(people, mailoutbox, settings):
    settings.EMAIL_BACKEND = "tests.digests.test_digest_delivery.RefusingBackend"
    harbor = [Business.objects.get(pk=BUSINESS)]

    failed = services.send_digests(harbor, now=NOW)

    row = DigestDelivery.objects.get(business_id=BUSINESS)
    assert len(failed.failed) == 1 and row.status == DigestStatus.FAILED and "mail server is down" in row.error
    services.send_digests(harbor, now=NOW)
    services.send_digests(harbor, now=NOW)
    assert DigestDelivery.objects.get(business_id=BUSINESS).attempts == services.MAX_ATTEMPTS
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert services.send_digests(harbor, now=NOW).messages == 0  # given up: it shows failed in the admin

    DigestDelivery.objects.all().delete()
    assert services.send_digests(harbor, now=NOW).messages == 3 and len(mailoutbox) == 3


def test_a_dry_run_lists_the_recipients_and_claims_and_sends_nothing(people, mailoutbox):
    result = services.send_digests(dry_run=True, now=NOW)

    assert {(p.business.pk, p.week_start, tuple(p.to)) for p in result.planned} == {
        (BUSINESS, WEEK, ("alice@example.com", "bob@example.com", "owner@example.com")),
        (OTHER, WEEK, ("bob@example.com",)),
    }
    assert mailoutbox == [] and not DigestDelivery.objects.exists()


def _send_in_threads(count: int) -> list[services.RunResult]:
    results: list[services.RunResult] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(services.send_digests(now=NOW))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    return results


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_senders_on_postgresql_send_each_digest_once(published_prices):
    if not on_postgres():
        pytest.skip("real concurrency needs PostgreSQL; SQLite runs the senders one after the other below")
    from tests.digests.helpers import load, make_business, make_payloads

    make_business()
    load(make_payloads())
    for name in ("alice", "bob"):
        staff_user(name, businesses=[BUSINESS])
    mail.outbox = []

    results = _send_in_threads(4)

    assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.com", "bob@example.com"]
    assert sum(r.digests for r in results) == 1 and sum(r.already_done for r in results) == 3


def test_senders_one_after_another_send_each_digest_once(people, mailoutbox):
    results = [services.send_digests(now=NOW) for _ in range(3)]

    assert [r.digests for r in results] == [2, 0, 0] and len(mailoutbox) == 4


def test_the_hourly_schedule_is_made_only_when_the_digest_is_on(db, settings):
    from django_q.models import Schedule

    settings.MLOPS_WEEKLY_DIGEST = False
    assert not schedule.ensure_schedule()
    assert not Schedule.objects.filter(name=schedule.SCHEDULE_NAME).exists()
    assert "off" in services.send_scheduled()

    settings.MLOPS_WEEKLY_DIGEST = True
    assert schedule.ensure_schedule() and not schedule.ensure_schedule()
    made = Schedule.objects.get(name=schedule.SCHEDULE_NAME)
    assert made.func == schedule.TASK and made.schedule_type == Schedule.HOURLY and made.next_run.minute == 15
    assert services.send_scheduled().startswith("0 digests sent")


def test_a_superuser_ticks_or_unticks_the_digest_on_a_grant_in_the_admin(people, client):
    client.force_login(people["boss"])
    grant = StaffBusinessAccess.objects.get(user=people["alice"])

    form = client.get(f"/admin/metrics_app/staffbusinessaccess/{grant.pk}/change/").content.decode()
    response = client.post(f"/admin/metrics_app/staffbusinessaccess/{grant.pk}/change/",
                           {"user": people["alice"].pk, "business": BUSINESS})

    assert re.search(r'<input type="checkbox" name="weekly_digest"[^>]* checked>', form)
    assert response.status_code == 302
    assert not StaffBusinessAccess.objects.get(pk=grant.pk).weekly_digest
    assert [u.username for u in services.recipients(BUSINESS)] == ["bob", "owner"]


def test_start_up_warns_when_the_digest_is_on_with_nowhere_to_send(settings):
    from metrics_app.digests.checks import SMTP_BACKEND, check_digest_mail

    settings.MLOPS_WEEKLY_DIGEST, settings.EMAIL_BACKEND = True, SMTP_BACKEND
    settings.EMAIL_HOST, settings.DEFAULT_FROM_EMAIL = "localhost", "mlops@localhost"
    (warning,) = check_digest_mail(None)
    assert warning.id == "metrics_app.W030" and "EMAIL_HOST and DEFAULT_FROM_EMAIL are left" in warning.msg

    settings.EMAIL_HOST, settings.DEFAULT_FROM_EMAIL = "smtp.example.com", "digest@example.com"
    assert check_digest_mail(None) == []
    settings.MLOPS_WEEKLY_DIGEST, settings.EMAIL_HOST = False, "localhost"
    assert check_digest_mail(None) == []


def test_while_the_analytics_are_rebuilt_a_run_claims_nothing_and_the_next_one_sends(people, mailoutbox, settings):
    from metrics_app.models import FolderState

    settings.MLOPS_WEEKLY_DIGEST = True
    FolderState.objects.update_or_create(name="events", defaults={"rebuild_needed": True})

    assert "being rebuilt" in services.send_scheduled()
    assert mailoutbox == [] and not DigestDelivery.objects.exists()

    FolderState.objects.filter(name="events").update(rebuild_needed=False)
    assert services.send_scheduled().startswith("2 digests sent (4 messages)")


def test_a_business_name_with_markup_is_shown_as_text_in_the_html_part(people, mailoutbox):
    Business.objects.filter(pk=BUSINESS).update(name='<img src=x onerror="alert(1)">Harbor')

    services.send_digests([Business.objects.get(pk=BUSINESS)], now=NOW)

    _, html, _ = _parts(mailoutbox[0])
    page = html.get_payload(decode=True).decode()
    assert "<img src=x" not in page and "&lt;img src=x" in page
