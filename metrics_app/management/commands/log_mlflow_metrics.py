"""`manage.py log_mlflow_metrics`: each prompt and knowledge-base version's daily figures, into MLflow."""

from __future__ import annotations

import zoneinfo
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from tqdm import tqdm

from metrics_app.models import Business
from metrics_app.tracking.client import MlflowUnavailable, configured, describe_failure
from metrics_app.tracking.live import log_live_figures


class Command(BaseCommand):
    help = (
        "Log each prompt_version's and kb_version's daily figures (booking, handoff and error rates, latency p50 and "
        "p95, cost per booking, conversations, replies) to MLflow at MLFLOW_TRACKING_URI: one experiment per "
        "business (business/<id>), one run per version, one point per day. By default the last MLFLOW_DAYS finished "
        "days; a day already in MLflow is not logged again. Days begin at midnight in each business's time zone. "
        "Example: manage.py log_mlflow_metrics --business acme-dental --days 30"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--business", action="append", dest="businesses", metavar="ID",
                            help="only this business (repeatable); default every business")
        parser.add_argument("--days", type=int, default=None,
                            help="how many finished days before today (default MLFLOW_DAYS, 7)")
        parser.add_argument("--date", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                            help="the last day to log (default yesterday); with --days, the days up to it")
        parser.add_argument("--tz", default=None,
                            help="time zone of the days for every business (default each business's own)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not configured():
            # Nothing to do is no failure: a schedule or a script may run this before MLflow is set up.
            self.stdout.write("MLflow is not configured (set MLFLOW_TRACKING_URI); nothing logged")
            return
        tz = self._zone(options["tz"]) if options["tz"] else None
        count = self._count(options["days"])
        days = self._days(count, options["date"])
        businesses = self._businesses(options["businesses"])
        try:
            result = log_live_figures(
                days, businesses, tz,
                progress=lambda ids: tqdm(ids, desc="businesses", unit="business", disable=None, file=self.stderr),
                count=count,
            )
        except MlflowUnavailable as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(f"the database cannot be read: {exc}") from None
        except Exception as exc:  # MLflow's own errors: the server down, refused, or answering nonsense
            raise CommandError(
                f"MLflow at {settings.MLFLOW_TRACKING_URI} failed: {describe_failure(exc)}"
            ) from None
        which = f"{days[0]} to {days[-1]}" if days else f"the {count} finished days before today"
        zone = tz.key if tz else "each business's time zone"
        self.stdout.write(f"{which} ({zone}): {result.line()}")

    @staticmethod
    def _zone(name: str) -> zoneinfo.ZoneInfo:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise CommandError(f"--tz must be an IANA time zone such as Europe/Berlin, got {name!r}") from None

    @staticmethod
    def _count(count: int | None) -> int:
        count = settings.MLFLOW_DAYS if count is None else count
        if not 1 <= count <= 366:
            raise CommandError(f"--days must be between 1 and 366, got {count}")
        return count

    @staticmethod
    def _days(count: int, last: date | None) -> list[date] | None:
        """The days up to --date; None: each business's finished days."""
        if last is None:
            return None
        return [last - timedelta(days=back) for back in range(count - 1, -1, -1)]

    @staticmethod
    def _businesses(ids: list[str] | None) -> list[str] | None:
        if not ids:
            return None
        known = set(Business.objects.filter(id__in=ids).values_list("id", flat=True))
        unknown = [business for business in ids if business not in known]
        if unknown:
            raise CommandError(f"no such business: {', '.join(unknown)}")
        return list(dict.fromkeys(ids))
