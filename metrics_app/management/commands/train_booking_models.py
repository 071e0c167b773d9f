"""`manage.py train_booking_models`: train each business's likely-bookings model now, and say how each did."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from tqdm import tqdm

from metrics_app.models import Business
from metrics_app.predictions import services
from metrics_app.predictions.services import TrainingResult


def describe(result: TrainingResult) -> str:
    """One line: the held-out Brier score against the base rate's, or why the business gets no predictions."""
    model = result.model
    if model.usable:
        metrics = model.metrics
        return (f"{model.business_id}: predictions on; held-out Brier {metrics['brier']:.4f} vs base rate "
                f"{metrics['base_brier']:.4f} (base rate {metrics['base_rate']:.1%}, "
                f"{metrics['held_out']['conversations']} held-out conversations)")
    return f"{model.business_id}: no predictions; {model.reason}"


class Command(BaseCommand):
    help = (
        "Train the likely-bookings model of every business with conversations in the last "
        f"{services.TRAINING_DAYS} days (or of --business), as the worker does daily: fit on the older ended "
        "conversations, judge on the newest quarter, and keep it. Prints each business's held-out Brier score "
        "beside the base rate's, or why it gets no predictions. Example: manage.py train_booking_models "
        "--business acme-dental"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--business", action="append", dest="businesses", metavar="ID",
                            help="only this business (repeatable); default every business with recent conversations")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            businesses = self._businesses(options["businesses"])
            results = services.train_all(
                businesses,
                progress=lambda chosen: tqdm(chosen, desc="businesses", unit="business", disable=None,
                                             file=self.stderr),
            )
        except DatabaseError as exc:
            raise CommandError(f"the database cannot be read: {exc}") from None
        for result in results:
            self.stdout.write(describe(result))
        usable = sum(result.model.usable for result in results)
        self.stdout.write(f"Trained {len(results)} business(es): {usable} with predictions, "
                          f"{len(results) - usable} without.")

    def _businesses(self, ids: list[str] | None) -> list[Business] | None:
        if not ids:
            return None
        found = {b.id: b for b in Business.objects.filter(id__in=ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise CommandError(f"no such business: {', '.join(missing)}")
        return [found[i] for i in dict.fromkeys(ids)]
