"""What the benchmarks share for the processes they start: this service's commands, and stopping a group."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
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
