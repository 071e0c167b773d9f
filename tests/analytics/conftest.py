"""The analytics tests' data: four businesses in odd time zones, their events stored twice over."""

from __future__ import annotations

from typing import Any

import pytest

from metrics_app.models import Business
from tests.analytics.helpers import BUSINESSES, make_events, store


@pytest.fixture
def analytics_data(db) -> list[dict[str, Any]]:
    for business_id, tz in BUSINESSES.items():
        Business.objects.create(id=business_id, time_zone=tz)
    payloads = make_events()
    store(payloads)
    # Retries: a third of the events again, which must change nothing.
    store(payloads[::3], chunk=50)
    return payloads
