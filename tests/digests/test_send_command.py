"""`manage.py send_weekly_digests`: what it sends, what a dry run says, and a clear message for bad input."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from metrics_app.models import DigestDelivery
from tests.digests.helpers import BUSINESS, WEEK
from tests.helpers import staff_user


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("send_weekly_digests", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def subscribed(folded_business):
    return staff_user("alice", businesses=[BUSINESS])


def test_it_sends_the_week_asked_for_once_and_says_so(subscribed, mailoutbox):
    first = _run("--business", BUSINESS, "--week", "2026-03-05")
    again = _run("--business", BUSINESS, "--week", "2026-03-05")

    assert first.strip() == "1 digests sent (1 messages), 0 already sent or being sent, 0 without recipients"
    assert again.startswith("0 digests sent (0 messages), 1 already sent")
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["alice@example.com"]
    assert DigestDelivery.objects.get().week_start == WEEK  # any day of the week picks its Monday


def test_a_dry_run_names_the_recipients_and_sends_nothing(subscribed, mailoutbox):
    out = _run("--week", WEEK.isoformat(), "--dry-run")

    assert f"{BUSINESS}, week of {WEEK}: alice@example.com" in out
    assert "dry run: 1 digests would be sent" in out
    assert mailoutbox == [] and not DigestDelivery.objects.exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--week", "2026-02-30"), "--week must be a date such as 2026-03-02 (YYYY-MM-DD), got '2026-02-30'"),
    (("--week", "9999-01-01"), "--week: the week of 9998-12-28 has not ended yet"),
    (("--week", "1990-01-01"), "--week: the week of 1990-01-01 is before 2000-01-03"),
    (("--business", "nobody-here"), "no such business: nobody-here"),
])
def test_bad_input_is_a_clear_message(subscribed, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _run(*args)


def test_a_refused_send_fails_the_command_after_its_summary(subscribed, settings):
    settings.EMAIL_BACKEND = "tests.digests.test_digest_delivery.RefusingBackend"

    with pytest.raises(CommandError, match="1 digests could not be sent"):
        _run("--week", WEEK.isoformat())
