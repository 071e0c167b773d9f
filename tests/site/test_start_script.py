"""start.sh takes a fresh clone to a running service."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.pgserver import free_port

pytestmark = pytest.mark.slow


def get(url: str, payload: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_start_sh_serves_a_fresh_clone_on_sqlite(tmp_path: Path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MLOPS_", "DJANGO_"))}
    # The clone reuses this checkout's virtual environment: installing is then a quick no-op.
    env.update({"PORT": str(port), "MLOPS_VENV": str(ROOT / ".venv"), "WEB_CONCURRENCY": "2"})
    log = (tmp_path / "start.log").open("w")
    process = subprocess.Popen(
        ["bash", "start.sh"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "start.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "start.log").read_text()
                time.sleep(0.3)
        assert status == 200 and body["status"] == "healthy"
        assert body["database"]["vendor"] == "sqlite"
        status, body = get(
            f"http://127.0.0.1:{port}/track",
            {"business_id": "test-business", "response_time_ms": 1500, "tokens_used": 150},
        )
        assert status == 201 and body["status"] == "success"
        # The pipeline's worker runs beside the web server, so a click in the admin gets done.
        processes = subprocess.run(["ps", "-s", str(process.pid), "-o", "pid=,args="], capture_output=True,
                                   text=True)
        workers = [int(line.split()[0]) for line in processes.stdout.splitlines() if "manage.py qcluster" in line]
        assert workers, processes.stdout
        # And the scheduled jobs' worker, a cluster of its own, so a long pipeline run holds up no periodic job.
        clusters = set()
        for pid in workers:
            with contextlib.suppress(OSError):
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                clusters.add(next((v for v in environ if v.startswith(b"Q_CLUSTER_NAME=")), b""))
        assert clusters == {b"", b"Q_CLUSTER_NAME=scheduled"}, clusters
        # The embedded default: an SQLite file inside the clone that git ignores.
        assert (clone / "data" / "mlops.sqlite3").exists()
        ignored = subprocess.run(["git", "check-ignore", "data/mlops.sqlite3"], cwd=clone, capture_output=True)
        assert ignored.returncode == 0
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    # Stopping start.sh stops the service it started.
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{port}/health")


def test_start_sh_refuses_a_python_older_than_the_service_needs(tmp_path: Path):
    # A stand-in for a Python 3.10 on PATH: it answers --version and fails any real work.
    old_python = tmp_path / "python3.10"
    old_python.write_text('#!/bin/sh\n[ "$1" = "--version" ] && { echo "Python 3.10.12"; exit 0; }\nexit 1\n')
    old_python.chmod(0o755)
    (tmp_path / "start.sh").write_bytes((ROOT / "start.sh").read_bytes())
    env = {**os.environ, "PYTHON": str(old_python), "MLOPS_VENV": str(tmp_path / "no-venv-yet")}
    finished = subprocess.run(["bash", "start.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert finished.returncode == 1
    assert "Python 3.10.12 is too old; the service needs Python 3.11 or newer" in finished.stderr
    assert not (tmp_path / "no-venv-yet").exists()
