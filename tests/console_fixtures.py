"""Fixtures for the staff console tests: staff users, limited staff, and events stored as /track stores them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Callable

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from metrics_app.ingest import services
from metrics_app.ingest.validation import check_event
from metrics_app.models import AIMetric
from tests.conftest import staff_user

PASSWORD = "console-test-password-9"  # noqa: S105


def store(**fields: Any) -> AIMetric:
    """Store one event through validation and record_events, as /track would."""
    payload = {"business_id": "acme-dental", "response_time_ms": 1000, "tokens_used": 100, **fields}
    payload.setdefault("event_id", str(uuid.uuid4()))
    if isinstance(payload.get("timestamp"), datetime):
        payload["timestamp"] = payload["timestamp"].isoformat()
    checked = check_event(payload)
    if not checked.ok:
        raise ValueError(f"a test event is invalid: {checked.errors}")
    services.record_events([checked.values])
    return AIMetric.objects.get(business_id=payload["business_id"], event_id=payload["event_id"])


@pytest.fixture
def store_event(db) -> Callable[..., AIMetric]:
    return store


@pytest.fixture
def superuser(db) -> User:
    return User.objects.create_superuser("boss", "boss@example.com", PASSWORD)


def make_staff(username: str, *, businesses: list[str] | None = None, perms: tuple[str, ...] = ()) -> User:
    """A staff user with the given `app_label.codename` permissions, granted every business or only `businesses`."""
    user = staff_user(username, businesses=businesses, password=PASSWORD)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


CONSOLE_VIEW_PERMS = (
    "metrics_app.view_aimetric", "metrics_app.view_conversation", "metrics_app.view_modelprice",
    "metrics_app.view_business", "metrics_app.view_apikey",
)


@pytest.fixture
def staff_factory(db) -> Callable[..., User]:
    def factory(
        username: str = "staff", businesses: list[str] | None = None, perms: tuple[str, ...] = CONSOLE_VIEW_PERMS
    ) -> User:
        return make_staff(username, businesses=businesses, perms=perms)

    return factory


@pytest.fixture
def logged_in(db) -> Callable[[User], Client]:
    """A test client with `user`'s admin session."""

    def login(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return login
