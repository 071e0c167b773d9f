"""Who may see which businesses: the one rule for every door (APIs, admin, dashboard, documents).

- An API key with the read scope sees its own business; an agency key (no
  business) sees every business. A key without the read scope, or one that is
  revoked or expired, sees nothing.
- A superuser sees every business.
- An active staff user sees the businesses their StaffBusinessAccess rows
  grant: each row one business, or every business for a row without one.
  With no row they see nothing, so a deleted business or a removed grant
  narrows what they see and never widens it.
- Anyone else (anonymous, a non-staff or inactive user) sees nothing.
- A whole business is erased only by a person who may write it, never by a key.

Everything that reads or writes a business's data asks this module; nothing
else decides it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet

from metrics_app.models import AIMetric, ApiKey, Business, StaffBusinessAccess

_Row = TypeVar("_Row", bound=Model)


def _key_of(user_or_key: Any) -> ApiKey | None:
    key = user_or_key if isinstance(user_or_key, ApiKey) else getattr(user_or_key, "key", None)
    return key if isinstance(key, ApiKey) else None


def _is_active(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_active", False))


def _is_active_staff(user: Any) -> bool:
    return _is_active(user) and bool(getattr(user, "is_staff", False))


def visible_business_ids(user_or_key: Any) -> set[str] | None:
    """The business ids this user or key may read; None means every business."""
    key = _key_of(user_or_key)
    if key is not None:
        if not key.can_read or not key.is_usable:
            return set()
        return None if key.business_id is None else {key.business_id}
    user = user_or_key
    if _is_active(user) and getattr(user, "is_superuser", False):
        return None
    if not _is_active_staff(user):
        return set()
    granted = list(StaffBusinessAccess.objects.filter(user_id=user.pk).values_list("business_id", flat=True))
    if None in granted:
        return None
    return set(granted)


def can_see(user_or_key: Any, business_id: str) -> bool:
    visible = visible_business_ids(user_or_key)
    return visible is None or business_id in visible


def sees_every_business(user_or_key: Any) -> bool:
    return visible_business_ids(user_or_key) is None


def may_write(user_or_key: Any) -> bool:
    """Whether this user or key may write (events, outcomes) for some business; the business is checked next."""
    key = _key_of(user_or_key)
    if key is not None:
        return key.can_ingest and key.is_usable and key.business_id is not None
    return visible_business_ids(user_or_key) != set()


def can_write(user_or_key: Any, business_id: str) -> bool:
    """Events and outcomes: a usable ingest key of that business, or a staff user who sees the business."""
    key = _key_of(user_or_key)
    if key is not None:
        return key.can_ingest and key.is_usable and key.business_id == business_id
    return can_see(user_or_key, business_id)


def can_erase_business(user_or_key: Any, business_id: str) -> bool:
    """Erasing a whole business: a person who may write it (a staff user who sees it, a superuser), never a key.

    An ingest key may write its business's events but not make the business disappear.
    """
    return _key_of(user_or_key) is None and _is_active(user_or_key) and can_write(user_or_key, business_id)


def visible_rows(user_or_key: Any, rows: QuerySet[_Row], field: str = "business_id") -> QuerySet[_Row]:
    """`rows` limited to the businesses `user_or_key` may see, by the row's business `field`."""
    ids = visible_business_ids(user_or_key)
    return rows if ids is None else rows.filter(**{f"{field}__in": ids})


def visible_businesses(user_or_key: Any) -> QuerySet[Business]:
    return visible_rows(user_or_key, Business.objects.all(), "id")


def visible_events(user_or_key: Any, events: QuerySet[AIMetric] | None = None) -> QuerySet[AIMetric]:
    return visible_rows(user_or_key, AIMetric.objects.all() if events is None else events)
