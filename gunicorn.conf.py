"""gunicorn settings for the service (start.sh and the tests serve with these).

Command-line options override them; the environment sets the usual ones.
"""

import multiprocessing
import os

# The service's own settings module reads .env and checks every value, so a
# bad HOST or PORT stops gunicorn with a message naming the variable.
from mlops_site import settings as service_settings

bind = f"{service_settings.HOST}:{service_settings.PORT}"
# Sync workers: one request at a time each, so a slow database never piles
# requests up inside one process. Ingest is short and mostly waits on the database.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = "sync"
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
