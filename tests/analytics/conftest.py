"""The analytics tests' data: four businesses in odd time zones, their events stored twice over.

Each test runs three times: with nothing folded yet (every answer from the
unfolded tail), with everything folded (from the rollups), and with the
folder halfway (both at once, late events of folded conversations included).
"""

from __future__ import annotations

from typing import Any

import pytest

from metrics_app.models import Business
from tests.analytics.helpers import BUSINESSES, make_events, store
from tests.helpers import fold_all


@pytest.fixture(params=["unfolded", "folded", "half-folded"])
def analytics_data(request, db) -> list[dict[str, Any]]:
    for business_id, tz in BUSINESSES.items():
        Business.objects.create(id=business_id, time_zone=tz)
    payloads = make_events()
    if request.param == "half-folded":
        # Every other event first, so later events land in folded conversations and quarter hours.
        store(payloads[::2])
        fold_all()
        store(payloads[1::2])
    else:
        store(payloads)
    # Retries: a third of the events again, which must change nothing.
    store(payloads[::3], chunk=50)
    if request.param == "folded":
        fold_all()
    return payloads
