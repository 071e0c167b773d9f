"""gunicorn settings for the service (start.sh and the tests serve with these).

Command-line options override them; the environment sets the usual ones, each
read by the typed helpers of mlops_site/env.py (README "Configuration").

gunicorn does not run Django's system checks, so `on_starting` runs them
before anything is bound: a production configuration that the checks refuse
(metrics_app/checks.py) stops the service with their messages.
"""

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The service's own settings module reads .env and checks every value, so a
# bad HOST or PORT stops gunicorn with a message naming the variable.
from django.core.exceptions import ImproperlyConfigured

from mlops_site import env


def _or_exit(read):  # type: ignore[no-untyped-def]  # wraps env's typed readers, whatever their signature
    """`read`, but a bad value stops gunicorn with the message that names the variable, without a traceback."""

    def checked(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return read(*args, **kwargs)
        except ImproperlyConfigured as exc:
            sys.exit(f"gunicorn.conf.py: configuration error: {exc}")

    return checked


envint, envstr = _or_exit(env.envint), _or_exit(env.envstr)
try:
    from mlops_site import settings as service_settings
except ImproperlyConfigured as exc:
    sys.exit(f"gunicorn.conf.py: configuration error: {exc}")

bind = f"{service_settings.HOST}:{service_settings.PORT}"
workers = envint("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2, minimum=1)
# Threads per worker. Ingest mostly waits on the database (a round trip, a WAL
# flush at commit), so a few threads per process keep more commits in flight
# and let PostgreSQL flush them together; GUNICORN_THREADS=1 gives plain sync workers.
threads = envint("GUNICORN_THREADS", 4, minimum=1)
worker_class = "gthread" if threads > 1 else "sync"
keepalive = 5
# 0 lets a request run for ever (gunicorn's meaning).
timeout = envint("GUNICORN_TIMEOUT", 30, minimum=0)
graceful_timeout = 10
# Recycle workers now and then so a slow leak cannot grow without bound (0: never).
max_requests = envint("GUNICORN_MAX_REQUESTS", 20000, minimum=0)
max_requests_jitter = 2000
accesslog = envstr("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = envstr("LOG_LEVEL", "info").lower()
# Bodies are bounded by the views (1 MiB for a batch); headers are bounded here.
limit_request_line = 8190
limit_request_fields = 100
# gunicorn 25+ opens a control socket for gunicornc at one path per user
# ($XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl): a second instance
# on the host took that path over, and the first one's stop removed it. So none,
# unless GUNICORN_CONTROL_SOCKET names a path of this instance's own.
_control_socket = envstr("GUNICORN_CONTROL_SOCKET")
if _control_socket:
    control_socket = _control_socket
control_socket_disable = not _control_socket

# --- Prometheus: prometheus_client's multiprocess mode, so that /metrics served
# by any worker sums the counts of all of them (metrics_app/monitoring/files.py).
# The directory must be known before a worker imports prometheus_client; when
# the operator gives none, the service makes a private one and removes it on exit.
_metrics_dir = envstr("PROMETHEUS_MULTIPROC_DIR")
_own_metrics_dir = not _metrics_dir
if _own_metrics_dir:
    _metrics_dir = tempfile.mkdtemp(prefix="mlops-prometheus-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

# prometheus_client picks its value store when first imported: only after the directory is set.
from metrics_app.monitoring import files as prometheus_files  # noqa: E402  (after the directory is set, as said above)

_MANAGE = Path(__file__).resolve().parent / "manage.py"


def run_system_checks():
    """Django's system checks, in a process of their own; False when they found errors (already printed).

    The master must not set Django up itself: its workers are forked from it,
    and the apps' metrics would write files under the master's pid.
    """
    env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
    # Issues go to stderr, which is gunicorn's error log; stdout only says that there were none.
    result = subprocess.run(
        [sys.executable, str(_MANAGE), "check"], env=env, stdout=subprocess.DEVNULL, check=False
    )
    return result.returncode == 0


def on_starting(server):
    if not run_system_checks():
        server.log.error("Refusing to serve: the system checks above found errors")
        if _own_metrics_dir:
            shutil.rmtree(_metrics_dir, ignore_errors=True)
        sys.exit(1)
    # A new service starts its counters at zero, as Prometheus expects after a restart.
    prometheus_files.prepare_directory(_metrics_dir)


def child_exit(server, worker):
    # A worker's counts outlive it: fold them into the archive files.
    prometheus_files.fold_dead_worker(_metrics_dir, worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
