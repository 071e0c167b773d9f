"""Make an API key for a business (or an agency read key) and print it once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from metrics_app.ingest.validation import FieldError, check_business_id
from metrics_app.keys import services as key_services
from metrics_app.models import ApiKeyScope, Business


class Command(BaseCommand):
    help = (
        "Create an API key and print it once (only its hash is stored). "
        "Example: manage.py create_api_key acme-dental --name 'chat app' --scope ingest"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("business_id", nargs="?", help="the business the key writes or reads")
        parser.add_argument("--name", required=True, help="what the key is for")
        parser.add_argument(
            "--scope", action="append", choices=[s.value for s in ApiKeyScope], dest="scopes",
            help="ingest and/or read (repeat the option); default: ingest",
        )
        parser.add_argument("--agency", action="store_true", help="a read key for every business (no business_id)")
        parser.add_argument("--expires-in-days", type=int, help="the key stops working after this many days")
        parser.add_argument("--rate-limit", type=int, help="requests per minute (default: the service's)")
        parser.add_argument("--create-business", action="store_true", help="create the business if it is new")

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = set(options["scopes"] or [ApiKeyScope.INGEST])
        business = None
        if options["agency"]:
            if options["business_id"]:
                raise CommandError("an agency key belongs to no business: drop the business id or --agency")
            if ApiKeyScope.INGEST in scopes:
                raise CommandError("an agency key may only read: use --scope read")
        else:
            business = self._business(options["business_id"], options["create_business"])
        if options["expires_in_days"] is not None and options["expires_in_days"] < 1:
            raise CommandError("--expires-in-days must be at least 1")
        if options["rate_limit"] is not None and options["rate_limit"] < 1:
            raise CommandError("--rate-limit must be at least 1")
        key, raw = key_services.create_api_key(
            business=business,
            name=options["name"],
            can_ingest=ApiKeyScope.INGEST in scopes,
            can_read=ApiKeyScope.READ in scopes,
            expires_at=key_services.expiry_in_days(options["expires_in_days"]),
            rate_limit_per_minute=options["rate_limit"],
        )
        owner = business.id if business else "all businesses"
        self.stderr.write(f"Created key {key.prefix} for {owner} with scopes {', '.join(key.scopes)}.")
        self.stderr.write("Copy it now: it is shown only this once.")
        self.stdout.write(raw)

    def _business(self, business_id: str | None, create: bool) -> Business:
        if not business_id:
            raise CommandError("give the business id, or --agency for an agency read key")
        try:
            check_business_id(business_id)
        except FieldError as exc:
            raise CommandError(f"business id {business_id!r} {exc}") from None
        business = Business.objects.filter(pk=business_id).first()
        if business is None:
            if not create:
                raise CommandError(f"no business {business_id!r}; add --create-business to create it")
            business = Business.objects.create(id=business_id)
            self.stderr.write(f"Created business {business_id}.")
        return business
