"""Helpers shared by the whole suite: the repository, skips, staff users, requests, the error shape, a real service."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from hypothesis import strategies as st

from metrics_app.models import Business

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip a test that needs a missing component on a laptop; fail it in CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"missing on this machine, and CI=true does not allow skipping: {what}", pytrace=False)
    # `what` may name one component or several ("Chromium and chromedriver"): no verb to agree with it.
    pytest.skip(f"not available on this machine: {what}")


def staff_user(username: str, *, businesses: list[str] | None = None, password: str = "pw-for-tests-only") -> Any:
    """An active staff user granted every business, or only `businesses` when given (made when absent)."""
    from django.contrib.auth.models import User

    from metrics_app.models import StaffBusinessAccess

    user = User.objects.create_user(username, f"{username}@example.com", password, is_staff=True)
    if businesses is None:
        StaffBusinessAccess.objects.create(user=user, business=None)
    for business_id in businesses or ():
        business, _ = Business.objects.get_or_create(id=business_id)
        StaffBusinessAccess.objects.create(user=user, business=business)
    return user


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


def post_json(client: Client, path: str, payload: Any, **headers: str):
    return client.post(path, data=json.dumps(payload), content_type="application/json", headers=headers)


def assert_error_shape(response, status: int, *fields: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["errors"], dict)
    for name in fields:
        assert name in body["errors"], body
        assert all(isinstance(reason, str) and reason for reason in body["errors"][name])
    return body


# Any JSON value, small: what a confused or hostile client might send as a body or a field.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=300),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=10,
)


# --- A real service, served by gunicorn as start.sh serves it.


def database_url_for_subprocess() -> str:
    """A DATABASE_URL that points a child process at the test database."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgresql://{auth}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


def direct_database_url_for_subprocess() -> str:
    """database_url_for_subprocess() on the PostgreSQL pass, but to the server itself rather than its PgBouncer.

    For the few tests that stop the server under a running service: they are about what the service does
    when PostgreSQL goes away, not about what PgBouncer does meanwhile.
    """
    direct = os.environ.get("MLOPS_TEST_PG_DIRECT_URL")
    if connection.vendor != "postgresql" or not direct:
        return database_url_for_subprocess()
    s = connection.settings_dict
    server = urllib.parse.urlsplit(direct)
    return urllib.parse.urlunsplit(server._replace(path=f"/{s['NAME']}"))


def pgbouncer_admin(command: str) -> list[tuple]:
    """The rows of one command on the admin console of the PgBouncer that tests.pgserver started."""
    import psycopg2

    url = os.environ.get("MLOPS_TEST_PGBOUNCER_ADMIN_URL")
    if not url:
        raise LookupError("no PgBouncer: this run was not started by tests.pgserver with pgbouncer installed")
    # The console speaks only the simple protocol and knows no transactions: autocommit, no BEGIN.
    admin = psycopg2.connect(url)
    try:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(command)
            return cursor.fetchall() if cursor.description else []
    finally:
        admin.close()


@dataclass
class LiveService:
    url: str
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    folder: subprocess.Popen | None = None

    def request(self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None):
        """(status, headers, parsed JSON or text) for one HTTP request."""
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body, status, resp_headers = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as err:
            body, status, resp_headers = err.read(), err.code, dict(err.headers)
        try:
            return status, resp_headers, json.loads(body)
        except ValueError:
            return status, resp_headers, body.decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# `python -m gunicorn` under time-machine; the first argument is the moment the clock stands at.
_FROZEN_GUNICORN = (
    "import sys, time_machine; time_machine.travel(sys.argv.pop(1), tick=False).start(); "
    "from gunicorn.app.wsgiapp import run; run(prog='gunicorn')"
)


def start_service(
    tmp_path: Path,
    *,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    timeout: float = 30.0,
    wait_healthy: bool = True,
    frozen_at: datetime | None = None,
    folder: bool = False,
) -> LiveService:
    """Serve the test database with gunicorn; return once /health answers (200, or anything if not wait_healthy).

    With `frozen_at`, the service's clock stands still at that moment, in the
    master and so in every worker it forks. With `folder`, `manage.py
    fold_events` runs beside it, as start.sh runs it, and stops with it.
    """
    from tests.pgserver import free_port

    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mlops_site.settings",
        "DATABASE_URL": database_url_for_subprocess(),
        "MLOPS_ENV": "development",
        "PORT": str(port),
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    log_path = tmp_path / f"gunicorn-{port}.log"
    launch = [sys.executable, "-m", "gunicorn"]
    if frozen_at is not None:
        launch = [sys.executable, "-c", _FROZEN_GUNICORN, frozen_at.isoformat()]
    process = subprocess.Popen(
        [*launch, "mlops_site.wsgi", "--config", str(ROOT / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    service = LiveService(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, env=env)
    if folder:
        service.folder = start_folder(tmp_path, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{service.log()}")
        try:
            status, _, _ = service.request("GET", "/health")
            if status == 200 or not wait_healthy:
                return service
        except OSError:
            pass
        time.sleep(0.1)
    stop_service(service)
    raise RuntimeError(f"gunicorn did not answer /health within {timeout} s:\n{service.log()}")


def start_folder(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """`manage.py fold_events` on the test database, in a process group of its own; stop it with stop_folder."""
    log = (tmp_path / f"folder-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "manage.py", "fold_events", "--idle", "0.05"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def start_worker(tmp_path: Path, env: dict[str, str], cluster: str | None = None) -> subprocess.Popen:
    """`manage.py qcluster` (the pipeline worker, or the cluster named `cluster`) in a process group of its own."""
    log = (tmp_path / f"worker-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=ROOT,
        env={**env, **({"Q_CLUSTER_NAME": cluster} if cluster else {})},
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_worker(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the worker's main process only, as start.sh stops it: it stops its own children in order."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left
    process.wait()


def stop_folder(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def fold_all() -> int:
    """Fold every stored event into conversations, rollups and /metrics' totals, as the folder would; how many."""
    from metrics_app.folding import services as folding

    return folding.fold_pending()


def stop_process_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the process's group, SIGKILL after `timeout` seconds; returns once it has ended."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def stop_service(service: LiveService) -> None:
    folder = getattr(service, "folder", None)
    if folder is not None:
        stop_folder(folder)
    stop_process_group(service.process, timeout=15)




# --- A real MLflow tracking server (full mlflow, in its own environment: it pins gunicorn<27, the service 27).

MLFLOW_SERVER_VENV = ROOT / ".venv-mlflow"


def mlflow_server_binary() -> Path | None:
    """MLFLOW_SERVER, else .venv-mlflow/bin/mlflow (test.sh installs requirements-mlflow-server.txt there)."""
    named = os.environ.get("MLFLOW_SERVER", "").strip()
    path = Path(named) if named else MLFLOW_SERVER_VENV / "bin" / "mlflow"
    return path if path.is_file() and os.access(path, os.X_OK) else None


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_mlflow_server(binary: Path, directory: Path, timeout: float = 90.0) -> MlflowServer:
    """`mlflow server` on loopback with an SQLite store and served artifacts in `directory`; returns once /health
    answers. One worker: the tests read back what they wrote, from the same process."""
    from tests.pgserver import free_port

    port = free_port()
    log_path = directory / "mlflow-server.log"
    process = subprocess.Popen(
        [str(binary), "server",
         "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
         "--artifacts-destination", str(directory / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=directory, stdin=subprocess.DEVNULL, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = MlflowServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    stop_process_group(process, timeout=10)
    raise RuntimeError(f"mlflow server did not answer /health within {timeout} s:\n{server.log()[-3000:]}")


def assert_stored_nowhere(text: str) -> None:
    """`text` is in no row of any table of the project's apps."""
    from django.apps import apps

    for label in ("metrics_app", "documents_app"):
        for model in apps.get_app_config(label).get_models():
            for row in model.objects.values_list():
                assert text not in repr(row), model.__name__
