"""Retries are safe under concurrency: many clients sending the same events store each once."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from metrics_app.models import AIMetric

CLIENTS = 8


def test_eight_clients_retrying_the_same_events_at_once_store_each_event_once(live_service):
    service = live_service(workers=4)
    events = [
        {"business_id": f"biz-{i % 2}", "event_id": str(uuid.uuid4()), "conversation_id": f"conv-{i % 5}",
         "response_time_ms": 700 + i, "tokens_used": i}
        for i in range(40)
    ]
    singles, batch_events = events[:20], events[20:]
    start = threading.Barrier(CLIENTS)
    statuses: dict[str, list[int]] = defaultdict(list)

    def client(_: int) -> tuple[int, int]:
        start.wait()  # every client fires at the same moment
        created = duplicates = 0
        for event in singles:
            status, _, body = service.request("POST", "/track", event)
            statuses[event["event_id"]].append(status)
            created += status == 201
            duplicates += bool(body.get("duplicate"))
        status, _, body = service.request("POST", "/track/batch", {"events": batch_events})
        assert status == 200, body
        return created + body["created"], duplicates + body["duplicates"]

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        answers = list(pool.map(client, range(CLIENTS)))

    # Exactly one client was told "created" for each event; every other answer was a duplicate.
    assert {event_id: sorted(seen) for event_id, seen in statuses.items()} == {
        event["event_id"]: [200] * (CLIENTS - 1) + [201] for event in singles
    }
    assert sum(created for created, _ in answers) == len(events)
    assert sum(dupes for _, dupes in answers) == len(events) * (CLIENTS - 1)
    assert AIMetric.objects.count() == len(events)
    stored = {(row.business_id, str(row.event_id)): row.response_time_ms for row in AIMetric.objects.all()}
    assert stored == {(e["business_id"], e["event_id"]): e["response_time_ms"] for e in events}
