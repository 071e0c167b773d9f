"""Erase a whole business everywhere it lives, as a named user, with an audit record."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from metrics_app.erasure import services as erasure


class Command(BaseCommand):
    help = (
        "Erase a business everywhere (events, conversations, figures, totals, keys, hours, experiments, grants, "
        "digests, booking models, documents, knowledge base, DVC objects) as USERNAME, who must be allowed to "
        "erase it; prints what goes. --dry-run only counts; without --yes it asks first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("business_id", help="the business's id, as the chat app sends it")
        parser.add_argument("--user", required=True, help="the username the erasure is recorded under")
        parser.add_argument("--reason", default="", help="why, kept in the erasure record")
        parser.add_argument("--yes", action="store_true", help="erase without asking")
        parser.add_argument("--dry-run", action="store_true", help="print what would be erased; change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        business_id = options["business_id"]
        user = get_user_model()._default_manager.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user named {options['user']!r}")
        if not user.has_perm("metrics_app.add_erasurerecord"):
            raise CommandError(f"{user.get_username()} may not erase businesses (needs 'Can add erasure record')")
        try:
            preview = erasure.erase_business(user, business_id, dry_run=True)
        except erasure.ErasureRefused as refused:
            raise CommandError(f"{business_id!r}: {refused}") from None
        self._print("Would erase" if options["dry_run"] or not options["yes"] else "Erasing", preview.counts)
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing was erased.")
            return
        if not options["yes"] and input(f"Erase {business_id} everywhere, for good? [y/N] ").strip().lower() != "y":
            raise CommandError("not erased")
        try:
            done = erasure.erase_business(user, business_id, reason=options["reason"])
        except (erasure.ErasureRefused, erasure.ErasureIncomplete) as failed:
            raise CommandError(f"{business_id!r}: {failed}") from None
        self._print("Erased", done.counts)
        record = done.record
        assert record is not None
        self.stdout.write(f"Erased {business_id} everywhere: {done.counts['events']} event(s), "
                          f"{done.counts['conversations']} conversation(s); erasure record {record.pk}.")

    def _print(self, heading: str, counts: dict[str, int]) -> None:
        self.stdout.write(f"{heading}:")
        for kind, count in counts.items():
            self.stdout.write(f"  {kind}: {count}")
