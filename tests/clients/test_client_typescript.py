"""The TypeScript client's own suite (Node's test runner), run against the real service from pytest.

`npm ci` installs it from its lock file, `npm test` builds it, type-checks the
seed-style chat route and runs the tests; the live ones get the service's URL
and an ingest key. The rows they say they stored are then counted here.
"""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

from metrics_app.models import AIMetric
from tests.clients.helpers import client_env

pytestmark = pytest.mark.slow


def test_the_typescript_clients_suite_passes_against_the_real_service(
    typescript_package, live_service, business, make_key, tmp_path
):
    _, raw_key = make_key(business, can_ingest=True)
    service = live_service(workers=2)
    report = tmp_path / "stored-ids.txt"
    env = client_env(
        service, raw_key, MLOPS_TEST_SERVICE_URL=service.url, MLOPS_TEST_API_KEY=raw_key,
        MLOPS_TEST_BUSINESS_ID=business.id, MLOPS_TEST_REPORT=str(report),
    )
    # The tests read their own variables; the package's defaults must not leak in.
    env.pop("MLOPS_SERVICE_URL")
    env.pop("MLOPS_API_KEY")
    done = subprocess.run(["npm", "test"], cwd=typescript_package, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "# fail 0" in output and "# skipped 0" in output, output[-3000:]

    expected = report.read_text().split()
    stored = Counter(
        str(event_id) for event_id in AIMetric.objects.filter(business_id=business.id).values_list("event_id", flat=True)
    )
    assert len(expected) == 120
    assert all(stored[event_id] == 1 for event_id in expected)
    # The seed-style route's five replies, one of them the failure path.
    assert AIMetric.objects.filter(business_id=business.id, session_id="live-session").count() == 5
    assert sum(stored.values()) == 125
