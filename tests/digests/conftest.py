"""The digest tests' data: one business in America/New_York, stored unfolded, folded, or half folded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from metrics_app.models import Business
from tests.console.browser import chromium
from tests.digests.helpers import load, make_business, make_payloads
from tests.helpers import fold_all


@pytest.fixture(params=["unfolded", "folded", "half-folded"])
def digest_data(request, db, published_prices) -> Business:
    business = make_business()
    payloads = make_payloads()
    if request.param == "half-folded":
        # Every other event first, so later events land in folded conversations and quarter hours.
        load(payloads[::2])
        fold_all()
        load(payloads[1::2])
    else:
        load(payloads)
    if request.param == "folded":
        fold_all()
    return business


@pytest.fixture
def folded_business(db, published_prices) -> Business:
    business = make_business()
    load(make_payloads())
    fold_all()
    return business


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver
