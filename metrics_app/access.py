"""Who may see which businesses: one rule for the APIs, the admin and the dashboard.

- An API key with the read scope sees its own business; an agency key (no
  business) sees every business. A key without the read scope sees nothing.
- A superuser sees every business.
- An active staff user sees every business, unless StaffBusinessAccess rows
  limit them: then only those businesses.
- Anyone else (anonymous, a non-staff or inactive user) sees nothing.
"""

from __future__ import annotations

from typing import Any

from metrics_app.models import ApiKey, StaffBusinessAccess


def visible_business_ids(user_or_key: Any) -> set[str] | None:
    """The business ids this user or key may read; None means every business."""
    key = user_or_key if isinstance(user_or_key, ApiKey) else getattr(user_or_key, "key", None)
    if isinstance(key, ApiKey):
        if not key.can_read or not key.is_usable:
            return set()
        return None if key.business_id is None else {key.business_id}
    user = user_or_key
    if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return set()
    if getattr(user, "is_superuser", False):
        return None
    if not getattr(user, "is_staff", False):
        return set()
    limited = set(StaffBusinessAccess.objects.filter(user_id=user.pk).values_list("business_id", flat=True))
    return limited or None


def can_see(user_or_key: Any, business_id: str) -> bool:
    visible = visible_business_ids(user_or_key)
    return visible is None or business_id in visible


def can_record_outcomes(user_or_key: Any, business_id: str) -> bool:
    """Outcomes are writes: a staff user who sees the business, or a key of that business with ingest."""
    key = user_or_key if isinstance(user_or_key, ApiKey) else getattr(user_or_key, "key", None)
    if isinstance(key, ApiKey):
        return key.can_ingest and key.is_usable and key.business_id == business_id
    return bool(getattr(user_or_key, "is_staff", False)) and can_see(user_or_key, business_id)
