"""What the benchmarks share for the processes they start: this service's commands and server, and stopping a group."""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_SECONDS = 15


def production_env(database_url: str) -> dict[str, str]:
    """This service as production requires it (metrics_app/checks.py), on `database_url`, with fresh secrets."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "mlops_site.settings",
        "PYTHONPATH": str(ROOT),
        "MLOPS_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "MLOPS_ALLOW_ANONYMOUS_CHAT": "false",
        "MLOPS_METRICS_TOKEN": secrets.token_urlsafe(24),
        "LOG_LEVEL": "WARNING",
    }


def manage(env: dict[str, str], *args: str) -> str:
    """`manage.py <args>` of this service; its stdout, or RuntimeError with its stderr."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group that `process` leads, SIGKILL if it is still there after STOP_SECONDS."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=STOP_SECONDS)


def service_command(port: int) -> list[str]:
    """This service under gunicorn with its own gunicorn.conf.py, as start.sh serves it, on 127.0.0.1:`port`."""
    return [sys.executable, "-m", "gunicorn", "mlops_site.wsgi", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]


def create_ingest_key(env: dict[str, str], business_id: str, name: str, rate_limit: int) -> str:
    """A new ingest key of `business_id` (created if missing), allowed `rate_limit` requests a minute."""
    return manage(env, "create_api_key", business_id, "--name", name, "--scope", "ingest",
                  "--rate-limit", str(rate_limit), "--create-business")


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Until GET `url`/health answers 200; TimeoutError after `timeout` seconds."""
    host, port = url.split("//")[1].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not come up")


@contextmanager
def serve(command: list[str], env: dict[str, str], url: str, cwd: Path) -> Iterator[subprocess.Popen]:
    """`command` in a process group of its own, once `url` answers /health; the group is stopped on the way out.

    Yields the process that leads the group (for a bench that reads the group's CPU time).

    When anything fails inside, the end of the server's log goes to stderr before the error.
    """
    log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(url)
        yield process
    except Exception:
        print(Path(log.name).read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        stop_group(process)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop what was started


def stop_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C does, so every `serve` and `finally` stops what it started."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
