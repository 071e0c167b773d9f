"""Revoke an API key by its visible prefix."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from metrics_app.keys import services as key_services
from metrics_app.models import KEY_PREFIX_MARK, ApiKey


class Command(BaseCommand):
    help = "Revoke an API key, given its prefix (as list_api_keys shows it) or the whole key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix", help="the key's prefix, e.g. 3f9a1c0b7d2e, or the whole key")

    def handle(self, *args: Any, **options: Any) -> None:
        prefix = options["prefix"].strip()
        if prefix.startswith(f"{KEY_PREFIX_MARK}_"):
            prefix = prefix.split("_")[1]
        key = ApiKey.objects.filter(prefix=prefix).first()
        if key is None:
            raise CommandError(f"no API key with prefix {prefix!r}")
        already = key.revoked_at is not None
        key_services.revoke_api_key(key)
        self.stdout.write(f"Key {key.prefix} ({key.name}) {'was already' if already else 'is now'} revoked.")
