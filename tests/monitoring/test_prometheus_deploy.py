"""The operator's kit in deploy/: promtool checks, a real Prometheus scraping the service, the Grafana dashboard."""

from __future__ import annotations

import json
import math
import subprocess
import uuid

import pytest
import yaml
from django.db.models import Count, Q, Sum

from metrics_app.models import AIMetric
from tests.helpers import fold_all, require
from tests.monitoring.helpers import (
    DEPLOY,
    PROMTOOL,
    have_prometheus,
    have_promtool,
    start_prometheus,
    wait_for,
)

DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
TOKEN = "scrape-token-for-the-test-prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel of every shipped dashboard."""
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                queries.append((panel["title"], target["expr"]))
    return queries


def as_run_by_grafana(expr: str) -> str:
    """The query Grafana sends with every variable set to All and a 1-minute rate window."""
    return expr.replace("$__rate_interval", "1m").replace("$business_id", ".*").replace("$model", ".*")


def test_promtool_accepts_the_scrape_config_and_the_alert_rules():
    require(have_promtool(), "promtool (Debian package prometheus)")
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 6 rules found" in rules.stdout


def test_every_alert_rule_has_a_firing_and_a_quiet_case_and_they_pass():
    require(have_promtool(), "promtool (Debian package prometheus)")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert names == {
        "MLOpsServiceDown", "AIRepliesSlow", "AIErrorRateHigh", "AICostSpike", "HumanHandoffRateHigh",
        "BusinessStoppedSendingEvents",
    }
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == names and quiet == names

    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_grafana_files_fit_together():
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/mlops.yml").read_text())
    uids = {source["uid"] for source in datasource["datasources"]}
    assert provider["providers"][0]["type"] == "file"
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] in uids, panel["title"]
                assert panel["targets"], panel["title"]
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for metric in ("ai_requests_total", "ai_response_time_seconds_bucket", "ai_tokens_used_total",
                   "ai_api_cost_usd_total", "appointments_requested_total", "appointments_booked_total",
                   "human_handoffs_total", "ai_failed_replies_total",
                   "gen_ai_client_operation_duration_seconds_bucket", "gen_ai_client_token_usage_bucket"):
        assert metric in exprs, metric


MODELS = ("gpt-4o-mini", "gemini-1.5-flash", None)
BUSINESSES = ("clinic-north", "clinic-south", "salon-east")


def wave(n: int) -> list[dict]:
    """A mix of every kind of event, so every panel has something to draw."""
    events = []
    for i in range(24):
        split = i % 2 == 0
        events.append({
            "business_id": BUSINESSES[i % 3],
            "event_id": str(uuid.uuid4()),
            "conversation_id": f"conv-{n}-{i % 6}",
            "response_time_ms": 300 + 700 * (i % 5),
            "tokens_used": 120 + i,
            **({"input_tokens": 100, "output_tokens": 20 + i} if split else {}),
            "api_cost_usd": 0.001 * (i + 1),
            "model_name": MODELS[i % 3],
            "intent_detected": ("general", "pricing", "appointment_booking")[i % 3],
            "response_type": ("text", "appointment_booking", "human_handoff", "error")[i % 4],
            "success_rate": 0 if i % 4 == 3 else 1,
            "appointment_requested": i % 3 == 2,
            "appointment_booked": i % 6 == 2,
            "human_handoff_requested": i % 4 == 2,
        })
    events.append(dict(events[0]))  # a retry: duplicate
    events.append({"business_id": "clinic-north", "response_time_ms": "fast", "tokens_used": 1})  # rejected
    return events


def test_a_real_prometheus_stores_exactly_the_counts_sent_and_every_dashboard_query_finds_data(
    live_service, tmp_path
):
    require(have_prometheus(), "prometheus server (Debian package prometheus)")
    service = live_service(workers=3, extra_env={"MLOPS_METRICS_TOKEN": TOKEN})
    status, headers, body = service.request("GET", "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), body
    prometheus = start_prometheus(tmp_path, service.url.removeprefix("http://"), token=TOKEN)
    try:
        wait_for(lambda: prometheus.scalar('up{job="mlops-service"}') == 1, 30, "the first scrape")
        sent = 0
        for n in range(3):
            status, _, body = service.request("POST", "/track/batch", {"events": wave(n)})
            assert status == 207, body
            sent += body["created"]
            fold_all()
            # Wait for Prometheus to store this wave before sending the next, so rates have two points.
            wait_for(lambda sent=sent: prometheus.scalar("sum(ai_requests_total)") == sent, 30, f"wave {n} in Prometheus")

        rows = AIMetric.objects.all()
        assert rows.count() == sent == 72
        per_business = {
            row["business_id"]: row for row in rows.values("business_id").annotate(
                events=Count("id"), tokens=Sum("tokens_used"),
                failed=Count("id", filter=Q(success_rate=0) | Q(response_type="error")),
                handoffs=Count("id", filter=Q(human_handoff_requested=True)),
                booked=Count("id", filter=Q(appointment_booked=True)),
            )
        }

        def by_business(promql: str) -> dict[str, float]:
            return {item["metric"]["business_id"]: float(item["value"][1]) for item in prometheus.query(promql)}

        assert by_business("sum by (business_id) (ai_requests_total)") == {
            b: row["events"] for b, row in per_business.items()}
        assert by_business("sum by (business_id) (ai_tokens_used_total)") == {
            b: row["tokens"] for b, row in per_business.items()}
        # Every business with replies has each series, at zero too, so rate() and increase() see its first one.
        assert by_business("sum by (business_id) (ai_failed_replies_total)") == {
            b: row["failed"] for b, row in per_business.items()}
        assert by_business("sum by (business_id) (human_handoffs_total)") == {
            b: row["handoffs"] for b, row in per_business.items()}
        assert by_business("sum by (business_id) (appointments_booked_total)") == {
            b: row["booked"] for b, row in per_business.items()}
        assert 0 in {row["booked"] for row in per_business.values()}
        assert prometheus.scalar('sum(mlops_ingest_events_total{outcome="duplicate"})') == 3
        assert prometheus.scalar('sum(mlops_ingest_events_total{outcome="rejected"})') == 3
        cost = float(rows.aggregate(c=Sum("api_cost_usd"))["c"])
        assert prometheus.scalar("sum(ai_api_cost_usd_total)") == pytest.approx(cost, rel=1e-9)

        empty = []
        for title, expr in dashboard_queries():
            values = [float(item["value"][1]) for item in prometheus.query(as_run_by_grafana(expr))]
            if not any(math.isfinite(value) for value in values):
                empty.append(f"{title}: {expr} -> {values}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        # The shipped alert rules load and evaluate without error against the real series.
        def rules_evaluated() -> list[dict]:
            groups = prometheus.api("rules")["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules) else []

        rules = wait_for(rules_evaluated, 30, "the alert rules to be evaluated")
        assert len(rules) == 6
        assert all(rule["health"] == "ok" for rule in rules), rules
    except BaseException:
        print(prometheus.log())
        raise
    finally:
        prometheus.stop()


def test_the_shipped_scrape_config_targets_the_services_metrics_path():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "mlops-service"
    assert job["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]


def test_a_restarted_service_keeps_its_ai_counters_and_resets_only_its_per_process_ones(
    live_service, tmp_path, monkeypatch
):
    require(have_prometheus(), "prometheus server (Debian package prometheus)")
    import tests.pgserver
    from tests.helpers import stop_service

    def send(service, count: int, *, retried: int = 0) -> None:
        events = [{"business_id": "clinic-north", "event_id": str(uuid.uuid4()), "response_time_ms": 800,
                   "tokens_used": 90, "intent_detected": "general", "response_type": "text"} for _ in range(count)]
        status, _, body = service.request("POST", "/track/batch", {"events": events + events[:retried]})
        assert status == 200 and (body["created"], body["duplicates"]) == (count, retried), body
        fold_all()

    # An operator-given directory: the restart must empty it.
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus-multiproc")}
    service = live_service(workers=2, extra_env=env)
    port = int(service.url.rsplit(":", 1)[1])
    prometheus = start_prometheus(tmp_path, f"127.0.0.1:{port}")
    duplicates = 'sum(mlops_ingest_events_total{outcome="duplicate"})'
    try:
        send(service, 10)
        wait_for(lambda: prometheus.scalar("sum(ai_requests_total)") == 10, 30, "the first events")
        send(service, 20, retried=2)
        wait_for(lambda: prometheus.scalar("sum(ai_requests_total)") == 30, 30, "the second events")
        wait_for(lambda: prometheus.scalar(duplicates) == 2, 30, "the duplicates")
        stop_service(service)
        wait_for(lambda: prometheus.scalar('up{job="mlops-service"}') == 0, 30, "Prometheus to see it down")

        # The same address again, as a restart keeps it.
        monkeypatch.setattr(tests.pgserver, "free_port", lambda: port)
        again = live_service(workers=2, extra_env=env)
        status, _, text = again.request("GET", "/metrics")
        assert status == 200
        assert 'ai_requests_total{business_id="clinic-north",intent="general",response_type="text"} 30.0' in text
        send(again, 20)
        wait_for(lambda: prometheus.scalar("sum(ai_requests_total)") == 50, 30, "the events after the restart")
        wait_for(lambda: prometheus.scalar(duplicates) == 0, 30, "the restarted duplicate count")

        # The folded totals never went back: no reset, and increase() is the events sent, plus its extrapolation.
        assert prometheus.scalar("sum(resets(ai_requests_total[10m]))") == 0
        (series,) = prometheus.query("ai_requests_total[10m]")
        values = [float(value) for _, value in series["values"]]
        assert (values[0], values[-1]) == (10, 50) and values == sorted(values)
        assert 40 <= prometheus.scalar("sum(increase(ai_requests_total[10m]))") < 80
        # The duplicates are counted per process, so the restart is a reset of that series only.
        assert prometheus.scalar('sum(resets(mlops_ingest_events_total{outcome="duplicate"}[10m]))') == 1
    finally:
        prometheus.stop()
