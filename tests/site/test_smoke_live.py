"""The real service, started as start.sh starts it, stores an event sent over HTTP."""

from metrics_app.models import AIMetric


def test_the_real_service_stores_an_event_sent_over_http(live_service, seed_event):
    service = live_service(workers=2)
    status, _, body = service.request("POST", "/track", seed_event)
    assert status == 201, body
    assert AIMetric.objects.filter(event_id=body["event_id"]).count() == 1
