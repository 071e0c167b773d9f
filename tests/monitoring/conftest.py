"""Fixtures of the Prometheus tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from metrics_app.models import Business
from metrics_app.monitoring import prometheus
from tests.monitoring.helpers import BUSINESSES


@pytest.fixture(autouse=True)
def _fresh_business_labels() -> Iterator[None]:
    # Each test rolls its businesses back; the label policy must not remember them.
    prometheus.labels.forget_businesses()
    yield
    prometheus.labels.forget_businesses()


@pytest.fixture
def businesses(db) -> list[Business]:
    """BUSINESSES, registered a minute apart in that order (the label cap keeps the first ones)."""
    start = timezone.now() - timedelta(days=1)
    return [Business.objects.create(id=b, created_at=start + timedelta(minutes=n)) for n, b in enumerate(BUSINESSES)]
