"""Helpers for the Prometheus tests: varied events, reading /metrics text, and the real Prometheus server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"

BUSINESSES = ("dental-one", "dental-two", "salon-three")  # registered in this order by the `businesses` fixture


def varied_event(n: int) -> dict[str, Any]:
    """Events that cross every bucket edge, miss each optional field now and then and raise every flag."""
    tokens = [1, 4, 5, 16, 4096, 4097, 10_000_000, 0, 300][n % 9]
    fields: dict[str, Any] = {
        "business_id": BUSINESSES[n % 3],
        "response_time_ms": [0, 100, 101, 250, 999, 1000, 60000, 60001, 3_600_000, 4321, 2000][n % 11],
        "tokens_used": tokens,
        "model_name": [None, "gpt-4o-mini", "GPT-4o-Mini", "my-finetune-7"][n % 4],
        "intent_detected": [None, "general", "pricing", "what is the meaning of life", "General"][n % 5],
        "response_type": [None, "text", "error", "poem"][(n // 2) % 4],
        "success_rate": [1, 0, 0.5, 1, 1, 1, 1][n % 7],
        "api_cost_usd": [None, 0.000001, 0.1, 12.345678, 0.002][n % 5],
        "appointment_requested": n % 4 == 0,
        "appointment_booked": n % 7 == 0,
        "human_handoff_requested": n % 6 == 0,
    }
    split = n % 5
    if split == 1:
        fields.update(input_tokens=tokens, output_tokens=n)
    elif split == 2:
        fields.update(output_tokens=tokens)
    return {key: value for key, value in fields.items() if value is not None}


def store_varied(store_event: Callable[..., Any], numbers: Iterable[int]) -> None:
    for n in numbers:
        store_event(**varied_event(n))


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from a Prometheus text exposition."""
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((dict(sample.labels), sample.value))
    return found


def total(text: str, name: str, **match: str) -> float:
    """Sum of a sample over the series whose labels include `match`."""
    return sum(
        value for labels, value in samples(text).get(name, [])
        if all(labels.get(key) == wanted for key, wanted in match.items())
    )


def label_values(text: str, name: str, label: str) -> set[str]:
    return {labels[label] for labels, _ in samples(text).get(name, []) if label in labels}


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until `condition()` is truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def worker_pids(master_pid: int) -> set[int]:
    """The gunicorn workers: the master's child processes."""
    pids: set[int] = set()
    task_dir = Path(f"/proc/{master_pid}/task")
    for task in task_dir.iterdir() if task_dir.exists() else ():
        children = (task / "children").read_text().split()
        pids.update(int(pid) for pid in children)
    return pids


# --- The real Prometheus server (Debian package `prometheus`)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def have_prometheus() -> bool:
    return os.access(PROMETHEUS, os.X_OK)


def have_promtool() -> bool:
    return os.access(PROMTOOL, os.X_OK)


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.api("query", query=promql)["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        from tests.helpers import stop_service  # stops any process group it is given

        stop_service(self)


def start_prometheus(tmp_path: Path, target: str | list[str], *, token: str | None = None) -> PrometheusServer:
    """Prometheus on a loopback port scraping `target` (host:port, or several) every second, with the shipped
    rules."""
    from tests.pgserver import free_port

    port = free_port()
    # The shipped configuration, pointed at the test service and scraping every second.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"] = [{"targets": [target] if isinstance(target, str) else target}]
    if token:
        job["authorization"] = {"type": "Bearer", "credentials": token}
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log_path = tmp_path / "prometheus.log"
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = PrometheusServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, 60, "Prometheus to be ready")
    except BaseException:
        server.stop()
        raise
    return server
