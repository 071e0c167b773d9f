from tests.conftest import post_json  # noqa: F401


def test_the_real_service_stores_an_event_sent_over_http(live_service, seed_event):
    service = live_service(workers=2)
    status, _, body = service.request("POST", "/track", seed_event)
    assert status == 201, body
    from metrics_app.models import AIMetric

    assert AIMetric.objects.filter(event_id=body["event_id"]).count() == 1
