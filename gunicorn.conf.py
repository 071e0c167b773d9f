"""gunicorn settings for the service (start.sh and the tests serve with these).

Command-line options override them; the environment sets the usual ones.
"""

import multiprocessing
import os

# The service's own settings module reads .env and checks every value, so a
# bad HOST or PORT stops gunicorn with a message naming the variable.
from mlops_site import settings as service_settings

bind = f"{service_settings.HOST}:{service_settings.PORT}"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
# Threads per worker. Ingest mostly waits on the database (a round trip, a WAL
# flush at commit), so a few threads per process keep more commits in flight
# and let PostgreSQL flush them together; GUNICORN_THREADS=1 gives plain sync workers.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread" if threads > 1 else "sync"
keepalive = 5
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 10
# Recycle workers now and then so a slow leak cannot grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = 2000
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Bodies are bounded by the views (1 MiB for a batch); headers are bounded here.
limit_request_line = 8190
limit_request_fields = 100
# gunicorn 25+ opens a control socket for gunicornc at one path per user
# ($XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl): a second instance
# on the host took that path over, and the first one's stop removed it. So none,
# unless GUNICORN_CONTROL_SOCKET names a path of this instance's own.
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
if _control_socket:
    control_socket = _control_socket
control_socket_disable = not _control_socket

# --- Prometheus: prometheus_client's multiprocess mode, so that /metrics served
# by any worker sums the counts of all of them (metrics_app/prometheus_files.py).
# The directory must be known before a worker imports prometheus_client; when
# the operator gives none, the service makes a private one and removes it on exit.
import shutil  # noqa: E402
import tempfile  # noqa: E402

_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mlops-prometheus-")

# prometheus_client picks its value store when first imported: only after the directory is set.
from metrics_app.monitoring import files as prometheus_files  # noqa: E402


def on_starting(server):
    # A new service starts its counters at zero, as Prometheus expects after a restart.
    prometheus_files.prepare_directory(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def child_exit(server, worker):
    # A worker's counts outlive it: fold them into the archive files.
    prometheus_files.fold_dead_worker(os.environ["PROMETHEUS_MULTIPROC_DIR"], worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
