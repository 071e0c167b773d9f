"""Writes to API keys: making a key (shown once) and revoking one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from metrics_app.models import ApiKey, Business
from metrics_app.rules import business_id_problem


def create_api_key(
    *,
    business: Business | None,
    name: str,
    can_ingest: bool = True,
    can_read: bool = False,
    expires_at: datetime | None = None,
    rate_limit_per_minute: int | None = None,
    created_by: Any = None,
) -> tuple[ApiKey, str]:
    """Make a key and return it with its raw value, which is shown once and never stored."""
    if business is None and can_ingest:
        raise ValueError("an agency key (no business) may only read")
    if not (can_ingest or can_read):
        raise ValueError("a key needs at least one scope")
    problem = business_id_problem(business.pk) if business is not None else None
    if problem is not None:
        raise ValueError(f"business id {business.pk!r} {problem}; its data stays readable, but it gets no new keys")
    raw, prefix, hashed = ApiKey.generate()
    key = ApiKey.objects.create(
        business=business,
        name=name,
        prefix=prefix,
        hashed_key=hashed,
        can_ingest=can_ingest,
        can_read=can_read,
        expires_at=expires_at,
        rate_limit_per_minute=rate_limit_per_minute,
        created_by=created_by if getattr(created_by, "pk", None) else None,
    )
    return key, raw


def revoke_api_key(key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def expiry_in_days(days: int | None) -> datetime | None:
    return timezone.now() + timedelta(days=days) if days else None
