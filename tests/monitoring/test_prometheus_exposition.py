"""The fast multiprocess exposition says exactly what prometheus_client's own collector says."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from metrics_app.monitoring.exposition import FastMultiProcessExposition
from metrics_app.monitoring.files import fold_dead_worker

# A worker: writes metrics to the directory in its own files, as a gunicorn worker does.
WORKER = textwrap.dedent('''
    import sys
    from prometheus_client import Counter, Gauge, Histogram, Summary
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    requests = Counter("req", "Requests \\\\ with a backslash\\nand a newline", ["business_id", "intent"])
    latency = Histogram("lat_seconds", "Latency", ["business_id"], buckets=(0.1, 1.0, 10.0))
    size = Summary("size_bytes", "Sizes", ["kind"])
    live = Gauge("live_things", "Things", ["kind"], multiprocess_mode="livesum")
    plain = Counter("plain_events", "No labels")
    odd = ['quote"d', "back\\\\slash", "new\\nline", "caf\\u00e9", "plain"]
    for n in range(count):
        business = f"b{(n * 7 + seed) % 23}"
        requests.labels(business, odd[n % len(odd)]).inc(1 + n % 3)
        latency.labels(business).observe(((n * 13 + seed) % 200) / 10)
        size.labels(odd[n % 2]).observe(n)
        plain.inc()
    live.labels("x").set(seed)
''')


def run_worker(directory: Path, seed: int, count: int) -> None:
    process = subprocess.run(
        [sys.executable, "-c", WORKER, str(seed), str(count)],
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert process.returncode == 0, process.stderr


def parsed(text: str) -> tuple[dict, dict]:
    """(family -> (type, help), (sample name, sorted labels) -> value)."""
    families, values = {}, {}
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, family.documentation)
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in values, f"duplicate sample {key}"
            values[key] = sample.value
    return families, values


def stock(directory: Path) -> str:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry).decode()


def assert_same(directory: Path, fast: FastMultiProcessExposition) -> dict:
    want_families, want_values = parsed(stock(directory))
    got_families, got_values = parsed(fast.render())
    assert got_families == want_families
    assert got_values.keys() == want_values.keys()
    for key, value in want_values.items():
        assert got_values[key] == pytest.approx(value, rel=1e-12), key
    return got_values


def test_it_matches_prometheus_client_over_several_workers_and_as_they_change(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    fast = FastMultiProcessExposition(str(directory))
    for seed in (1, 2):
        run_worker(directory, seed, 300)
    values = assert_same(directory, fast)
    assert values[("plain_events_total", ())] == 600
    # More values in the same files, and new series appended to them: the layout learnt stays right.
    for seed in (1, 2, 3):
        run_worker(directory, seed + 10, 500)
    values = assert_same(directory, fast)
    assert values[("plain_events_total", ())] == 600 + 1500


def test_it_stays_exact_when_a_dead_workers_files_are_folded(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    fast = FastMultiProcessExposition(str(directory))
    for seed in (1, 2, 3):
        run_worker(directory, seed, 200)
    before = assert_same(directory, fast)
    pids = sorted({int(p.name.rsplit("_", 1)[1][:-3]) for p in directory.glob("counter_*.db")})
    for pid in pids[:2]:
        assert fold_dead_worker(str(directory), pid) > 0
    assert not any(p.name.endswith((f"_{pids[0]}.db", f"_{pids[1]}.db")) for p in directory.iterdir())
    after = assert_same(directory, fast)
    # Live gauges of the dead workers are gone; every counter and histogram is unchanged.
    additive = {k: v for k, v in before.items() if not k[0].startswith("live_things")}
    assert {k: after[k] for k in additive} == pytest.approx(additive)


def test_an_empty_directory_renders_nothing(tmp_path):
    assert FastMultiProcessExposition(str(tmp_path)).render() == ""
