"""`manage.py send_weekly_digests`: each business's weekly digest, by e-mail, once per week."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from metrics_app.analytics.rollups import RebuildPending
from metrics_app.digests.selectors import BadWeek
from metrics_app.digests.services import send_digests
from metrics_app.models import Business


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--week must be a date such as 2026-03-02 (YYYY-MM-DD), got {value!r}") from None


class Command(BaseCommand):
    help = (
        "Send each business's weekly digest (replies, conversations, bookings and their change, after-hours "
        "demand, handoffs, cost and cost per booking, a chart) to the staff users granted that business. By "
        "default the last week that has ended, Monday to Sunday in each business's time zone, for every business "
        "with a recipient; a week already sent is not sent again. Uses Django's mail settings (EMAIL_BACKEND). "
        "Example: manage.py send_weekly_digests --business acme-dental --week 2026-03-02 --dry-run"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--business", action="append", dest="businesses", metavar="ID",
                            help="only this business (repeatable); default every business with a recipient")
        parser.add_argument("--week", default=None, metavar="YYYY-MM-DD",
                            help="the week holding this date (default the last week that has ended)")
        parser.add_argument("--dry-run", action="store_true",
                            help="list who would get which digest; claim and send nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        week = _date(options["week"]) if options["week"] else None
        businesses = self._businesses(options["businesses"])
        try:
            result = send_digests(businesses, week, dry_run=options["dry_run"])
        except BadWeek as exc:
            raise CommandError(f"--week: {exc}") from None
        except RebuildPending as exc:
            raise CommandError(f"the analytics need a rebuild first: {exc}") from None
        except DatabaseError as exc:
            raise CommandError(f"the database cannot be read: {exc}") from None
        if options["dry_run"]:
            for planned in result.planned:
                self.stdout.write(f"{planned.business.pk}, week of {planned.week_start}: {', '.join(planned.to)}")
            self.stdout.write(f"dry run: {len(result.planned)} digests would be sent, "
                              f"{result.already_done} already sent, {result.no_recipients} without recipients")
            return
        self.stdout.write(result.line())
        if result.failed:
            raise CommandError(f"{len(result.failed)} digests could not be sent; they are tried again at the next run")

    @staticmethod
    def _businesses(ids: list[str] | None) -> list[Business] | None:
        if not ids:
            return None
        found = {b.pk: b for b in Business.objects.filter(pk__in=ids)}
        missing = [business_id for business_id in ids if business_id not in found]
        if missing:
            raise CommandError(f"no such business: {', '.join(missing)}")
        return [found[business_id] for business_id in dict.fromkeys(ids)]
