"""List API keys: prefix, owner, scopes and state. Never the keys themselves."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from metrics_app.models import ApiKey


class Command(BaseCommand):
    help = "List API keys (prefix, business, scopes, state, last use)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--business", help="only this business's keys")

    def handle(self, *args: Any, **options: Any) -> None:
        keys = ApiKey.objects.select_related("business").order_by("business_id", "created_at")
        if options["business"]:
            keys = keys.filter(business_id=options["business"])
        rows = [("PREFIX", "BUSINESS", "NAME", "SCOPES", "STATE", "LAST USED")]
        for key in keys:
            state = "revoked" if key.revoked_at else ("active" if key.is_usable else "expired")
            last = key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "never"
            rows.append((key.prefix, key.business_id or "(all, agency)", key.name, ",".join(key.scopes), state, last))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        self.stdout.write(f"{len(rows) - 1} key(s).")
