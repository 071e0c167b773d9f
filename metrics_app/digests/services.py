"""Sending the weekly digest: who gets it, the claim that makes each (business, week) go out once, the mail.

Recipients of a business's digest are the active staff users with an e-mail
address who hold a grant naming that business (a StaffBusinessAccess row for
it) with its weekly_digest box ticked, as it is by default. A grant of every
business, or being a superuser, does not subscribe anyone: an agency that
sees a hundred businesses would get a hundred mails.
Each recipient is checked again with `access.can_see` just before their mail
is sent, and gets a message of their own, holding that one business.

Exactly once: a sender first claims the (business, week) by inserting its
DigestDelivery row (unique on both), so of concurrent senders only one goes
on; it records each recipient it has mailed, then marks the row sent. If the
sender dies after claiming, its claim goes stale after STALE_CLAIM without
progress and a later run takes it over, mailing only the recipients not
recorded yet; the one message that can go twice is the one handed to the mail
server in the moment before its recipient was recorded. A send that fails
(the mail server refuses or is down) marks the row failed, and a later run
tries again, MAX_ATTEMPTS times in all. The figures are read before the
claim, so a read that cannot be made (the analytics being rebuilt) claims
nothing and the next run simply tries again.
"""

from __future__ import annotations

import logging
import os
import socket
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.mime.image import MIMEImage
from email.utils import make_msgid
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from metrics_app import access
from metrics_app.analytics.rollups import RebuildPending
from metrics_app.digests import render
from metrics_app.digests.selectors import Digest, check_week, due_week, week_of, weekly_digest
from metrics_app.models import Business, DigestDelivery, DigestStatus, StaffBusinessAccess

log = logging.getLogger(__name__)

# A claim with no progress for this long belongs to a sender that died; a later run takes it over.
STALE_CLAIM = timedelta(hours=1)
# A digest whose sending failed is tried again at the next runs, this many times in all.
MAX_ATTEMPTS = 3
# Digests one run sends at most; the hourly schedule sends the rest in the next runs.
MAX_DIGESTS_PER_RUN = 200


def _sender() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


def _subscribed(business_id: str | None = None) -> Q:
    """The grants that subscribe: naming one business, ticked, held by an active staff user with an address."""
    grants = Q(business__isnull=False, weekly_digest=True, user__is_active=True, user__is_staff=True) & ~Q(
        user__email="")
    return grants & Q(business_id=business_id) if business_id is not None else grants


def recipients(business_id: str) -> list[Any]:
    """The users who get this business's digest, each allowed by the access rule at this moment."""
    user_ids = StaffBusinessAccess.objects.filter(_subscribed(business_id)).values("user_id")
    users = get_user_model().objects.filter(pk__in=user_ids).order_by("pk")
    return [user for user in users if access.can_see(user, business_id)]


def subscribed_businesses() -> list[Business]:
    """The businesses somebody would get a digest of, by id."""
    ids = StaffBusinessAccess.objects.filter(_subscribed()).values("business_id")
    return list(Business.objects.filter(pk__in=ids).order_by("pk"))


# --- The message.

# Where the HTML's chart goes; each message puts its own Content-ID there.
CHART_PLACEHOLDER = "cid:replies-per-day"


def message(digest: Digest, to: str, *, html: str, text: str, chart: bytes) -> EmailMultiAlternatives:
    """One recipient's mail: a plain-text part, and an HTML part showing the chart attached inline (by CID)."""
    cid = make_msgid(domain="digest.mlops")[1:-1]
    subject = " ".join(render.title(digest).split())  # no line break can reach the header
    mail = EmailMultiAlternatives(subject=subject, body=text, from_email=settings.DEFAULT_FROM_EMAIL, to=[to])
    mail.attach_alternative(html.replace(CHART_PLACEHOLDER, f"cid:{cid}"), "text/html")
    image = MIMEImage(chart, "png")
    image.add_header("Content-ID", f"<{cid}>")
    image.add_header("Content-Disposition", "inline", filename="replies-per-day.png")
    mail.attach(image)
    # The image belongs to the HTML, not beside it as a download (an attribute the stubs do not declare).
    mail.mixed_subtype = "related"  # type: ignore[attr-defined]
    return mail


# --- The claim.


def claim(business: Business, monday: date, now: datetime | None = None) -> DigestDelivery | None:
    """The (business, week)'s delivery row, claimed for this sender; None when another sender has it or it is done."""
    now = now or timezone.now()
    try:
        with transaction.atomic():
            return DigestDelivery.objects.create(business=business, week_start=monday, claimed_at=now,
                                                 claimed_by=_sender())
    except IntegrityError:
        pass
    # Taking over is one conditional UPDATE: of two senders that both see a stale or failed row, one matches.
    takeover = (Q(status=DigestStatus.FAILED, attempts__lt=MAX_ATTEMPTS)
                | Q(status=DigestStatus.CLAIMED, claimed_at__lt=now - STALE_CLAIM))
    rows = DigestDelivery.objects.filter(takeover, business=business, week_start=monday)
    taken = rows.update(status=DigestStatus.CLAIMED, claimed_at=now, claimed_by=_sender(),
                        attempts=F("attempts") + 1, error="")
    return DigestDelivery.objects.get(business=business, week_start=monday) if taken else None


def deliver(delivery: DigestDelivery, digest: Digest, users: Iterable[Any], connection: Any = None) -> int:
    """Mail the claimed digest to each of `users` not mailed yet, then mark it sent; the messages sent.

    An exception (the mail server refuses or is down) leaves the row claimed with its progress: the caller
    marks it failed.
    """
    connection = connection or get_connection()
    html = render.html(digest, CHART_PLACEHOLDER)
    text = render.text(digest)
    chart = render.chart_png(digest)
    done = set(delivery.sent_to)
    rows = DigestDelivery.objects.filter(pk=delivery.pk)
    sent = 0
    for user in users:
        if user.pk in done or not access.can_see(user, digest.business_id):
            continue
        connection.send_messages([message(digest, user.email, html=html, text=text, chart=chart)])
        done.add(user.pk)
        sent += 1
        # Progress keeps the claim fresh, and a sender taking it over skips who is recorded here.
        rows.update(sent_to=sorted(done), claimed_at=timezone.now())
    rows.update(status=DigestStatus.SENT, sent_at=timezone.now())
    return sent


# --- A run: every subscribed business's due week, or the ones asked for.


@dataclass
class Planned:
    business: Business
    week_start: date
    to: list[str]


@dataclass
class RunResult:
    digests: int = 0
    messages: int = 0
    already_done: int = 0
    no_recipients: int = 0
    failed: list[str] = field(default_factory=list)
    deferred: int = 0
    planned: list[Planned] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{self.digests} digests sent ({self.messages} messages)",
                 f"{self.already_done} already sent or being sent", f"{self.no_recipients} without recipients"]
        if self.deferred:
            parts.append(f"{self.deferred} left for the next run")
        if self.failed:
            parts.append(f"{len(self.failed)} failed: {'; '.join(self.failed)}")
        return ", ".join(parts)


def _week_for(business: Business, week: date | None, now: datetime) -> date:
    tz = zoneinfo.ZoneInfo(business.time_zone or "UTC")
    if week is None:
        return due_week(tz, now)
    monday = week_of(week)
    check_week(monday, tz, now)
    return monday


def _already_sent(businesses: list[Business], weeks: dict[str, date]) -> set[str]:
    rows = DigestDelivery.objects.filter(business_id__in=list(weeks), status=DigestStatus.SENT,
                                         week_start__in=set(weeks.values()))
    return {b for b, monday in rows.values_list("business_id", "week_start") if weeks.get(b) == monday}


def send_digests(businesses: list[Business] | None = None, week: date | None = None, *, dry_run: bool = False,
                 now: datetime | None = None) -> RunResult:
    """Send each business's digest of the week holding `week` (default: the last week ended in its zone).

    Raises BadWeek (selectors) when `week` has not ended in a business's zone. A dry run claims and sends
    nothing: it lists who would get which digest.
    """
    now = now or timezone.now()
    chosen = subscribed_businesses() if businesses is None else businesses
    weeks = {business.pk: _week_for(business, week, now) for business in chosen}
    done = _already_sent(chosen, weeks)
    result = RunResult()
    for business in chosen:
        monday = weeks[business.pk]
        if business.pk in done:
            result.already_done += 1
            continue
        users = recipients(business.pk)
        if not users:
            result.no_recipients += 1
            continue
        if dry_run:
            result.planned.append(Planned(business, monday, [user.email for user in users]))
            continue
        if result.digests >= MAX_DIGESTS_PER_RUN:
            result.deferred += 1
            continue
        _send_one(business, monday, users, now, result)
    return result


def _send_one(business: Business, monday: date, users: list[Any], now: datetime, result: RunResult) -> None:
    # Read before claiming: a read that cannot be made now (the analytics being rebuilt) leaves no claim behind,
    # and RebuildPending ends the run, since every business would wait alike.
    digest = weekly_digest(business, monday)
    delivery = claim(business, monday, now)
    if delivery is None:
        result.already_done += 1
        return
    try:
        result.messages += deliver(delivery, digest, users)
    except Exception as exc:  # the mail server refused or is unreachable: recorded on the row, tried again later
        DigestDelivery.objects.filter(pk=delivery.pk).update(status=DigestStatus.FAILED,
                                                             error=f"{type(exc).__name__}: {exc}"[:500])
        log.exception("the weekly digest of %s for the week of %s failed", business.pk, monday)
        result.failed.append(f"{business.pk} week of {monday}: {type(exc).__name__}: {exc}"[:300])
        return
    result.digests += 1


def send_scheduled() -> str:
    """The worker's hourly job: every subscribed business's last week, when MLOPS_WEEKLY_DIGEST is on."""
    if not settings.MLOPS_WEEKLY_DIGEST:
        return "the weekly digest is off (MLOPS_WEEKLY_DIGEST); nothing sent"
    try:
        return send_digests().line()
    except RebuildPending:
        return "the analytics are being rebuilt: no digest sent this hour; the next run sends them"
