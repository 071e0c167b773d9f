"""/metrics under gunicorn with several workers and instances: exact sums, killed workers, label floods, later bookings."""

from __future__ import annotations

import http.client
import os
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db.models import Sum

from metrics_app.models import AIMetric
from tests.helpers import fold_all
from tests.monitoring.helpers import label_values, total, wait_for, worker_pids

pytestmark = pytest.mark.slow


def scrape(service) -> str:
    status, _, body = service.request("GET", "/metrics")
    assert status == 200, body
    return body


def event(business_id: str, n: int, **fields) -> dict:
    return {
        "business_id": business_id,
        "event_id": str(uuid.uuid4()),
        "response_time_ms": 100 + n,
        "tokens_used": n % 97 + 1,
        "intent_detected": ("general", "pricing", "hours")[n % 3],
        "response_type": "text",
        **fields,
    }


def send_batches(service, batches: list[list[dict]]) -> list[dict]:
    def post(batch: list[dict]) -> dict:
        status, _, body = service.request("POST", "/track/batch", {"events": batch})
        assert status == 200, body
        return body

    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(post, batches))


def test_counts_summed_over_workers_equal_the_stored_events_on_every_scrape(live_service):
    service = live_service(workers=3)
    businesses = ["clinic-a", "clinic-b", "salon-c"]
    batches = [
        [event(businesses[(i + j) % 3], i * 20 + j) for j in range(20)] for i in range(30)
    ]
    # Retries of already-sent events and a rejected one in every fifth batch.
    for i in range(0, 30, 5):
        batches[i] = batches[i] + [dict(batches[i - 1][0]) if i else dict(batches[0][0])]
        batches[i].append({"business_id": "clinic-a", "response_time_ms": -1, "tokens_used": 1})
    single = [event("clinic-a", 1000 + n) for n in range(30)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda b: service.request("POST", "/track/batch", {"events": b}), batches))
        singles = list(pool.map(lambda e: service.request("POST", "/track", e), single))
    # Every fifth batch holds a rejected event: a partial success.
    assert [status for status, _, _ in answers] == [207 if i % 5 == 0 else 200 for i in range(30)]
    assert all(status == 201 for status, _, _ in singles)

    stored = AIMetric.objects.count()
    created = sum(body["created"] for _, _, body in answers) + len(singles)
    duplicates = sum(body["duplicates"] for _, _, body in answers)
    rejected = sum(body["rejected"] for _, _, body in answers)
    assert stored == created == 630
    tokens = AIMetric.objects.aggregate(t=Sum("tokens_used"))["t"]
    fold_all()

    # Every worker answers scrapes; each must see the sum over all of them.
    for _ in range(9):
        text = scrape(service)
        assert total(text, "ai_requests_total") == stored
        assert total(text, "ai_response_time_seconds_count") == stored
        assert total(text, "ai_tokens_used_total") == tokens
        assert total(text, "mlops_ingest_events_total", outcome="created") == created
        assert total(text, "mlops_ingest_events_total", outcome="duplicate") == duplicates
        assert total(text, "mlops_ingest_events_total", outcome="rejected") == rejected
        for business in businesses:
            assert total(text, "ai_requests_total", business_id=business) == AIMetric.objects.filter(
                business_id=business).count()


def test_killed_workers_lose_no_counts_and_their_files_are_folded(live_service, tmp_path):
    metrics_dir = tmp_path / "prometheus-multiproc"
    service = live_service(workers=3, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    first = [[event("clinic-a", i * 10 + j) for j in range(10)] for i in range(12)]
    send_batches(service, first)
    # Retries: the duplicates are counted by the workers that answered them, in their files.
    send_batches(service, first[:3])
    fold_all()
    assert total(scrape(service), "ai_requests_total") == 120

    workers = worker_pids(service.process.pid)
    assert len(workers) == 3
    dead = set(sorted(workers)[:2])
    for pid in dead:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(service.process.pid) - workers) == 2, 30, "two new workers")

    # The master folds a dead worker's files into the archive and deletes them.
    def folded() -> bool:
        return not any(path.name.endswith(f"_{pid}.db") for path in metrics_dir.iterdir() for pid in dead)

    wait_for(folded, 10, "the dead workers' files to be folded")
    assert (metrics_dir / "counter_archive.db").exists()

    for _ in range(6):
        text = scrape(service)
        assert total(text, "ai_requests_total") == 120
        assert total(text, "mlops_ingest_events_total", outcome="duplicate") == 30
    send_batches(service, [[event("clinic-b", 500 + i * 10 + j) for j in range(10)] for i in range(6)])
    fold_all()
    for _ in range(6):
        text = scrape(service)
        assert total(text, "ai_requests_total") == AIMetric.objects.count() == 180
        assert total(text, "ai_response_time_seconds_bucket", le="+Inf") == 180


def test_a_flood_of_business_ids_and_intents_keeps_metrics_bounded(live_service):
    cap = 40
    service = live_service(workers=3, extra_env={"MLOPS_PROMETHEUS_MAX_BUSINESSES": str(cap)})
    def flood_event(business_id: str, n: int) -> dict:
        return event(business_id, n, intent_detected=f"intent number {n}", response_type=f"type-{n}",
                     model_name=f"model-{n}")

    flood = [flood_event(f"flood-{n:05d}", n) for n in range(3000)]
    send_batches(service, [flood[i:i + 500] for i in range(0, 3000, 500)])
    assert AIMetric.objects.count() == 3000

    fold_all()
    text = scrape(service)
    businesses = label_values(text, "ai_requests_total", "business_id")
    assert len(businesses) <= cap + 1
    assert "other" in businesses
    assert label_values(text, "ai_requests_total", "intent") == {"other"}
    assert label_values(text, "ai_requests_total", "response_type") == {"other"}
    assert label_values(text, "ai_tokens_used_total", "model") == {"other"}
    assert total(text, "ai_requests_total") == 3000
    # About 13 lines per business of the latency histogram, plus a few hundred of the rest.
    assert len(text.encode()) < 200_000

    # A second flood of new ids adds no series at all.
    def ai_lines(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(("ai_", "appointments_", "human_"))]

    lines_before = len(ai_lines(text))
    more = [flood_event(f"flood-more-{n:05d}", 3000 + n) for n in range(1000)]
    send_batches(service, [more[i:i + 500] for i in range(0, 1000, 500)])
    fold_all()
    text = scrape(service)
    assert total(text, "ai_requests_total") == 4000
    assert label_values(text, "ai_requests_total", "business_id") <= businesses | {"other"}
    assert len(ai_lines(text)) <= lines_before


def test_a_booking_recorded_later_through_the_api_moves_the_booked_counter_once(live_service, business, make_key):
    _, raw_key = make_key(business, can_ingest=True)
    auth = {"Authorization": f"Bearer {raw_key}"}
    service = live_service(workers=2)
    for n in range(3):
        status, _, body = service.request(
            "POST", "/track", event(business.id, n, conversation_id="conv-1", appointment_requested=n == 2), auth
        )
        assert status == 201, body
    fold_all()
    assert total(scrape(service), "appointments_booked_total", business_id=business.id) == 0

    outcome = {"conversation_id": "conv-1", "appointment_booked": True}
    for _ in range(2):  # a repeat records nothing new
        status, _, body = service.request("POST", "/api/conversations/outcome", outcome, auth)
        assert status == 200, body
    booked_rows = AIMetric.objects.filter(business_id=business.id, appointment_booked=True).count()
    fold_all()
    for _ in range(4):
        assert total(scrape(service), "appointments_booked_total", business_id=business.id) == booked_rows == 1


def test_every_instance_on_one_database_reports_the_same_database_wide_ai_series(live_service):
    one, two = live_service(workers=2), live_service(workers=2)
    send_batches(one, [[event("clinic-a", i * 10 + j) for j in range(10)] for i in range(5)])
    retried = [event("clinic-b", 900 + j, model_name="gpt-4o-mini") for j in range(10)]
    send_batches(two, [retried])
    send_batches(two, [retried])
    fold_all()

    def ai_lines(text: str) -> set[str]:
        return {line for line in text.splitlines() if line.startswith(("ai_", "gen_ai_", "appointments_", "human_"))}

    texts = {name: scrape(service) for name, service in (("one", one), ("two", two))}
    assert ai_lines(texts["one"]) == ai_lines(texts["two"])
    for text in texts.values():
        assert total(text, "ai_requests_total") == AIMetric.objects.count() == 60
        assert total(text, "mlops_ingest_events_total", outcome="created") == 60
    # What is stored nowhere is counted by the instance that answered.
    assert total(texts["one"], "mlops_ingest_events_total", outcome="duplicate") == 0
    assert total(texts["two"], "mlops_ingest_events_total", outcome="duplicate") == 10


def test_workers_killed_during_ingest_leave_every_counter_equal_to_the_stored_events(live_service, tmp_path):
    """kill -9 of workers while events stream in: the counters, read from the folded totals, miss nothing."""
    metrics_dir = tmp_path / "prometheus-multiproc"
    service = live_service(workers=3, folder=True, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    batches = [[event(f"clinic-{i % 3}", i * 20 + j) for j in range(20)] for i in range(150)]
    killed = 0
    seen: list[float] = []

    def stream() -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            # A batch cut off by a kill is simply lost to the client (no answer): the database says what was stored.
            list(pool.map(lambda b: _send_ignoring_drops(service, b), batches))

    with ThreadPoolExecutor(max_workers=1) as sender:
        streaming = sender.submit(stream)
        while not streaming.done() and killed < 6:
            workers = worker_pids(service.process.pid)
            if workers:
                os.kill(min(workers), signal.SIGKILL)
                killed += 1
            try:
                seen.append(total(scrape(service), "ai_requests_total"))
            except (OSError, http.client.HTTPException):
                pass  # the worker that took the scrape was the one just killed
        streaming.result()
    assert killed >= 3, "the stream ended before workers could be killed"
    stored = AIMetric.objects.count()
    assert stored > 0
    wait_for(lambda: fold_state_done(), 60, "the folder to fold every stored event")
    text = scrape(service)
    latencies = AIMetric.objects.exclude(response_time_ms__isnull=True).count()
    assert total(text, "ai_requests_total") == stored
    assert total(text, "mlops_ingest_events_total", outcome="created") == stored
    assert total(text, "ai_response_time_seconds_count") == latencies
    assert total(text, "ai_response_time_seconds_bucket", le="+Inf") == latencies
    assert total(text, "gen_ai_client_operation_duration_seconds_count") == latencies
    assert total(text, "ai_tokens_used_total") == AIMetric.objects.aggregate(t=Sum("tokens_used"))["t"]
    # Never backwards, though workers died and were replaced while it was read.
    assert seen == sorted(seen) and seen[-1] <= stored


def _send_ignoring_drops(service, batch: list[dict]) -> None:
    try:
        service.request("POST", "/track/batch", {"events": batch})
    except (OSError, http.client.HTTPException):
        pass


def fold_state_done() -> bool:
    from metrics_app.models import FOLDER_NAME, FolderState

    state = FolderState.objects.filter(name=FOLDER_NAME).first()
    highest = AIMetric.objects.order_by("-id").values_list("id", flat=True).first()
    return state is not None and highest is not None and state.folded_through >= highest
