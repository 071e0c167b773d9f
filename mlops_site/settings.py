"""Settings for the MLOps service, read from the environment.

A `.env` file in the project root is read first when present; variables that
are already set in the environment win over it. See the configuration table in
README.md for every variable.

Each section sets its own settings once; no later section changes them. A
value that cannot be read (not a number, not a URL) stops the import with a
message naming its variable (mlops_site/env.py). Values that can be read but
are refused, such as insecure production settings, are reported by the system
checks in metrics_app/checks.py, which every `manage.py` command and
gunicorn's start-up (gunicorn.conf.py) run before serving.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from mlops_site.env import envbool, envchoice, envint, envlist, envorigins, envstr

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / "data"

load_dotenv(envstr("MLOPS_ENV_FILE") or BASE_DIR / ".env", override=False)

MLOPS_ENV = envchoice("MLOPS_ENV", "development", ("development", "production"))
IS_PRODUCTION = MLOPS_ENV == "production"

# The secret used when SECRET_KEY is unset; the production checks refuse it.
MLOPS_DEVELOPMENT_SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"
SECRET_KEY = envstr("SECRET_KEY") or MLOPS_DEVELOPMENT_SECRET_KEY
DEBUG = envbool("DEBUG", False)

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "" if IS_PRODUCTION else "127.0.0.1,localhost,[::1],testserver")

# The address and port that start.sh binds: loopback only in development.
HOST = envstr("HOST", "0.0.0.0" if IS_PRODUCTION else "127.0.0.1")
PORT = envint("PORT", 5000, minimum=1, maximum=65535)

# --- CORS: the chat app's origins. "*" opens it to every origin (development only).
_cors = envorigins("CORS_ALLOWED_ORIGINS", "" if IS_PRODUCTION else "http://localhost:3000,http://127.0.0.1:3000")
CORS_ALLOW_ALL_ORIGINS = "*" in _cors
CORS_ALLOWED_ORIGINS = [origin for origin in _cors if origin != "*"]
CORS_ALLOW_HEADERS = ("accept", "authorization", "content-type", "x-api-key", "user-agent")

# --- The database: SQLite file by default, PostgreSQL when DATABASE_URL says so.
# django-prometheus's database wrappers count connections, queries, their
# duration and errors per database: a failing or slow database is the first
# thing an operator looks for, and the cost is one counter per query.
_PROMETHEUS_ENGINES = {
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
}
_default_db_url = f"sqlite:///{DATA_DIR / 'mlops.sqlite3'}"
_db_url = envstr("DATABASE_URL") or _default_db_url
try:
    _db = dj_database_url.parse(_db_url, conn_max_age=envint("DB_CONN_MAX_AGE", 60, minimum=0))
except Exception as exc:  # dj-database-url raises several types for a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if _db["ENGINE"] not in _PROMETHEUS_ENGINES:
    raise ImproperlyConfigured(
        f"DATABASE_URL must be a sqlite:/// or postgresql:// URL, got engine {_db['ENGINE']}"
    )
_options: dict[str, object]
_test: dict[str, object] = {}  # the test database's name, SQLite only
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _options = {
        # WAL lets readers work while gunicorn workers write; IMMEDIATE takes
        # the write lock at BEGIN so concurrent writers queue instead of failing.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        # Seconds a write waits for another writer's lock before the request answers 503 "busy".
        "timeout": envint("DB_BUSY_TIMEOUT", 20, minimum=1),
    }
    _test = {"NAME": envstr("MLOPS_TEST_SQLITE", str(DATA_DIR / "test.sqlite3"))}
else:
    # Fail fast when the server is away, so /track answers 503 instead of hanging.
    _options = {**_db.get("OPTIONS", {}), "connect_timeout": envint("DB_CONNECT_TIMEOUT", 3, minimum=1)}
# "transaction": DATABASE_URL reaches PostgreSQL through a pooler in transaction mode (PgBouncer's
# pool_mode = transaction), so consecutive transactions of one connection may run on different server
# sessions. Server-side cursors outside a transaction are declared WITH HOLD and read in later
# transactions, which land elsewhere: Django then reads .iterator() results with ordinary cursors.
DATABASE_POOLING = envchoice("DATABASE_POOLING", "none", ("none", "transaction"))
if DATABASE_POOLING == "transaction" and _db["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_POOLING=transaction needs a postgresql:// DATABASE_URL (a pooler's address)")
DATABASES = {
    "default": {
        **_db,
        "ENGINE": _PROMETHEUS_ENGINES[_db["ENGINE"]],
        "OPTIONS": _options,
        **({"TEST": _test} if _test else {}),
        "CONN_HEALTH_CHECKS": True,
        "DISABLE_SERVER_SIDE_CURSORS": DATABASE_POOLING == "transaction",
    }
}
# A streaming replica of the primary (README "PostgreSQL": instances, replica, pooling). With it, the reads of
# analytics, conversations and the console come from the replica while it replays within the lag bound; writes,
# ingest, sessions and the folder stay on the primary. Without it, everything reads the primary.
_replica_url = envstr("DATABASE_REPLICA_URL")
if _replica_url:
    try:
        _replica = dj_database_url.parse(_replica_url, conn_max_age=envint("DB_CONN_MAX_AGE", 60, minimum=0))
    except Exception as exc:
        raise ImproperlyConfigured(f"DATABASE_REPLICA_URL is not a valid database URL: {exc}") from None
    if _replica["ENGINE"] != "django.db.backends.postgresql" or _db["ENGINE"] != _replica["ENGINE"]:
        raise ImproperlyConfigured("DATABASE_REPLICA_URL needs a postgresql:// replica of a postgresql:// DATABASE_URL")
    DATABASES["replica"] = {
        **_replica,
        "ENGINE": _PROMETHEUS_ENGINES[_replica["ENGINE"]],
        # A replica that does not answer soon is taken as down: reads go to the primary meanwhile.
        "OPTIONS": {**_replica.get("OPTIONS", {}),
                    "connect_timeout": envint("DB_REPLICA_CONNECT_TIMEOUT", 1, minimum=1)},
        "CONN_HEALTH_CHECKS": True,
        # A replica reached through a pooler too (its own PgBouncer): the same setting applies to both.
        "DISABLE_SERVER_SIDE_CURSORS": DATABASE_POOLING == "transaction",
        "TEST": {"MIRROR": "default"},
    }
DATABASE_ROUTERS = ["metrics_app.replica.Router"]
# Reads leave the replica once its replay is this many seconds behind the primary, and come back once it catches up.
DATABASE_REPLICA_MAX_LAG_SECONDS = envint("DATABASE_REPLICA_MAX_LAG_SECONDS", 10, minimum=0)
# How often each process measures the replica's lag (one query on each server).
DATABASE_REPLICA_CHECK_SECONDS = envint("DATABASE_REPLICA_CHECK_SECONDS", 2, minimum=1)
# A staff session that wrote reads from the primary for this long, so it sees its own write.
DATABASE_REPLICA_PIN_SECONDS = envint("DATABASE_REPLICA_PIN_SECONDS", 30, minimum=1)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "metrics_app",
    "documents_app",
    # documents_app's pipeline runs in django-q2's worker (`manage.py qcluster`).
    "django_q",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "metrics_app.http.middleware.DatabaseUnavailableMiddleware",
    "metrics_app.http.middleware.RefuseNulCharactersMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "metrics_app.http.middleware.ReplicaReadsMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "metrics_app.monitoring.prometheus.MetricsAfterMiddleware",
]

ROOT_URLCONF = "mlops_site.urls"
WSGI_APPLICATION = "mlops_site.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve admin assets straight from the apps when collectstatic has not run.
WHITENOISE_USE_FINDERS = True
# Files served at the site's root: the favicon that browsers ask every page for.
WHITENOISE_ROOT = BASE_DIR / "mlops_site" / "public"

# Bodies: the batch endpoint takes up to 1 MiB; Django refuses larger ones.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "metrics_app.errors.api_exception_handler",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "metrics_app.keys.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # The ingest's parser (orjson, bounded size and depth), so every API answers a bad body alike.
    "DEFAULT_PARSER_CLASSES": ["metrics_app.http.bodies.StrictJSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # The analytics API's OpenAPI schema (SPECTACULAR_SETTINGS below).
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# --- The service's own switches.
# Development lets the chat app's endpoints (/track*, /api/knowledge-base/*) work without a key, as the seed's
# client does; production always needs one.
MLOPS_ALLOW_ANONYMOUS_CHAT = envbool("MLOPS_ALLOW_ANONYMOUS_CHAT", not IS_PRODUCTION)
# Default request budget of an API key, per minute, shared by all workers.
MLOPS_KEY_RATE_LIMIT_PER_MINUTE = envint("MLOPS_KEY_RATE_LIMIT_PER_MINUTE", 6000, minimum=1)
# Seconds a client is told to wait after a 503 (database away).
MLOPS_RETRY_AFTER_SECONDS = envint("MLOPS_RETRY_AFTER_SECONDS", 5, minimum=1)
# The background folder (manage.py fold_events): events per fold transaction, the seconds its lease lasts
# unrenewed, and the backlog of unfolded events past which /health says "degraded".
MLOPS_FOLDER_BATCH = envint("MLOPS_FOLDER_BATCH", 2000, minimum=1, maximum=50_000)
MLOPS_FOLDER_LEASE_SECONDS = envint("MLOPS_FOLDER_LEASE_SECONDS", 15, minimum=2, maximum=3600)
MLOPS_FOLDER_MAX_BACKLOG = envint("MLOPS_FOLDER_MAX_BACKLOG", 20_000, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO").upper()},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Production's transport security. Insecure production settings (the development secret, DEBUG, open
# CORS or hosts, key-less chat) are refused by the system checks (metrics_app/checks.py).
if IS_PRODUCTION:
    SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")
    if envbool("BEHIND_TLS_PROXY", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # HSTS: browsers keep to HTTPS for this host. Django sends it on HTTPS answers only; 0 turns it off,
    # for a plain-HTTP install behind a proxy that sends its own.
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 365 * 24 * 3600, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
    # Off by default: the TLS proxy in front usually redirects, and without BEHIND_TLS_PROXY every request
    # would look like plain HTTP and loop. Load balancers and Prometheus may probe over plain HTTP.
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
    SECURE_REDIRECT_EXEMPT = [r"^health/?$", r"^metrics$"]

# --- Prometheus (metrics_app/monitoring/; README "Monitoring with Prometheus"). The database wrappers are
# chosen with the database above.
# gunicorn.conf.py makes a private PROMETHEUS_MULTIPROC_DIR when none is given; a given one must exist
# before the first metric is made, in every process that reads these settings.
_metrics_dir = envstr("PROMETHEUS_MULTIPROC_DIR")
if _metrics_dir:
    Path(_metrics_dir).mkdir(parents=True, exist_ok=True)
# When set, GET /metrics needs "Authorization: Bearer <token>" (16+ characters, checked by metrics_app/checks.py).
MLOPS_METRICS_TOKEN = envstr("MLOPS_METRICS_TOKEN")
# Label bounds: the first N registered businesses keep their business_id label, the rest are "other".
MLOPS_PROMETHEUS_MAX_BUSINESSES = envint("MLOPS_PROMETHEUS_MAX_BUSINESSES", 500, minimum=1, maximum=10000)
MLOPS_PROMETHEUS_BUSINESS_REFRESH_SECONDS = envint("MLOPS_PROMETHEUS_BUSINESS_REFRESH_SECONDS", 60, minimum=1)
# Values that keep their own label; any other is "other", a missing one "unknown".
MLOPS_PROMETHEUS_INTENTS = envlist(
    "MLOPS_PROMETHEUS_INTENTS",
    "general,appointment_booking,appointment_cancellation,appointment_reschedule,pricing,hours,location,"
    "services,insurance,emergency,complaint,greeting,human_handoff,error",
)
MLOPS_PROMETHEUS_RESPONSE_TYPES = envlist(
    "MLOPS_PROMETHEUS_RESPONSE_TYPES", "text,appointment_booking,human_handoff,clarification,fallback,error"
)
MLOPS_PROMETHEUS_MODELS = envlist(
    "MLOPS_PROMETHEUS_MODELS",
    "gemini-1.5-flash,gemini-1.5-pro,gemini-2.0-flash,gemini-2.5-flash,gemini-2.5-pro,"
    "gpt-4o,gpt-4o-mini,gpt-4.1,gpt-4.1-mini,gpt-4.1-nano,claude-3-5-haiku,claude-3-5-sonnet,"
    "claude-sonnet-4,claude-haiku-4-5",
)

# --- Analytics API and its OpenAPI schema (metrics_app/api/, docs/analytics.md)
# The schema and its UI (/api/schema/, /api/docs/) for everyone; otherwise for staff sessions and API keys.
MLOPS_PUBLIC_API_DOCS = envbool("MLOPS_PUBLIC_API_DOCS", not IS_PRODUCTION)
SPECTACULAR_SETTINGS = {
    "TITLE": "MLOps service for AI receptionists",
    "DESCRIPTION": "Events from the chat app, analytics, conversations. Figures are defined below (docs/analytics.md).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # metrics_app/api/docs.py decides who may read the schema (MLOPS_PUBLIC_API_DOCS); a key is
    # counted there, once.
    "SERVE_AUTHENTICATION": [],
    # The UI's scripts come from the drf-spectacular-sidecar package, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The experiments' choice sets, named once for every field that uses them.
    "ENUM_NAME_OVERRIDES": {
        "ExperimentDimensionEnum": "metrics_app.models.ExperimentDimension",
        "ExperimentMetricEnum": "metrics_app.models.ExperimentMetric",
    },
    # /health, /track and /track/batch are plain Django views: described by hand.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "metrics_app.api.schema.add_chat_endpoints",
    ],
}

# --- documents_app (documents, the DVC pipeline and the knowledge base; README "Documents and the knowledge base")
# The folder holding dvc.yaml, params.yaml and data/: uploads land under its raw folder, the worker runs
# `dvc repro` there, and the search endpoint reads its knowledge base.
DOCUMENTS_PIPELINE_ROOT = Path(envstr("DOCUMENTS_PIPELINE_ROOT") or BASE_DIR).resolve()
# The largest document the admin accepts; the pipeline's own max_file_size_mb (params.yaml) also applies.
DOCUMENTS_MAX_UPLOAD_MB = envint("DOCUMENTS_MAX_UPLOAD_MB", 10, minimum=1, maximum=500)
# What the pipeline reads of one document: past a limit it keeps what it read and records the cut
# ("truncated" with the limit). A 627 KB DOCX can hold six million paragraphs; these bound memory and time.
DOCUMENTS_READ_MAX_CHARS = envint("DOCUMENTS_READ_MAX_CHARS", 1_000_000, minimum=1000)
DOCUMENTS_READ_MAX_PARAGRAPHS = envint("DOCUMENTS_READ_MAX_PARAGRAPHS", 100_000, minimum=100)
DOCUMENTS_READ_MAX_PAGES = envint("DOCUMENTS_READ_MAX_PAGES", 1000, minimum=1)
DOCUMENTS_READ_MAX_XML_MB = envint("DOCUMENTS_READ_MAX_XML_MB", 50, minimum=1, maximum=2000)
DOCUMENTS_READ_MAX_SECONDS = envint("DOCUMENTS_READ_MAX_SECONDS", 60, minimum=1)
# A pipeline run still going after this long is stopped and marked failed.
DOCUMENTS_RUN_TIMEOUT_SECONDS = envint("DOCUMENTS_RUN_TIMEOUT_SECONDS", 3600, minimum=10)
# The django-q2 cluster that runs the scheduled jobs, and how long one job may take.
SCHEDULED_CLUSTER = "scheduled"
SCHEDULED_JOB_TIMEOUT_SECONDS = envint("MLOPS_SCHEDULED_JOB_TIMEOUT_SECONDS", 1800, minimum=60)
# django-q2 with the database as its queue, so no broker server is needed. One worker: runs go one at a time.
Q_CLUSTER = {
    "name": "documents",
    "orm": "default",
    "workers": 1,
    "recycle": 50,
    "timeout": DOCUMENTS_RUN_TIMEOUT_SECONDS + 60,
    "retry": DOCUMENTS_RUN_TIMEOUT_SECONDS + 120,
    "max_attempts": 1,
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 200,
    "poll": envint("DOCUMENTS_WORKER_POLL_SECONDS", 1, minimum=1),
    "label": "Background tasks",
    # The scheduled jobs (MLflow's daily figures, and the others that make a schedule) run in a cluster of their
    # own, `Q_CLUSTER_NAME=scheduled manage.py qcluster` (start.sh starts it), so they never wait behind a
    # pipeline run. Across instances each due job runs once: a scheduler pass locks the schedule's row.
    "ALT_CLUSTERS": {
        SCHEDULED_CLUSTER: {
            "workers": 2, "timeout": SCHEDULED_JOB_TIMEOUT_SECONDS, "retry": SCHEDULED_JOB_TIMEOUT_SECONDS + 60,
            "label": "Scheduled jobs",
        },
    },
}

# --- Mail and the weekly digest (README "The weekly digest", docs/digest.md)
# Short names for Django's mail backends; any other value is taken as a backend's dotted path.
_MAIL_BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
    "file": "django.core.mail.backends.filebased.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
}
# Development prints mail on the worker's output (DEBUG is off there by default, so it cannot decide);
# production sends through the SMTP server below.
_mail_backend = envstr("EMAIL_BACKEND") or ("smtp" if IS_PRODUCTION else "console")
EMAIL_BACKEND = _MAIL_BACKENDS.get(_mail_backend.lower(), _mail_backend)
if "." not in EMAIL_BACKEND:
    raise ImproperlyConfigured(
        f"EMAIL_BACKEND must be one of {', '.join(_MAIL_BACKENDS)} or a backend's dotted path, got {_mail_backend!r}"
    )
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 587, minimum=1, maximum=65535)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", True)
# A mail server that stops answering must not hold the worker: seconds before a send gives up.
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 30, minimum=1, maximum=600)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "mlops@localhost")
# The folder the file backend writes one file per message into.
EMAIL_FILE_PATH = Path(envstr("EMAIL_FILE_PATH") or DATA_DIR / "mail").resolve()
# Off by default: a digest goes to people, so sending is a decision; the command and the admin's downloads
# work either way.
MLOPS_WEEKLY_DIGEST = envbool("MLOPS_WEEKLY_DIGEST", False)

# --- Retention (README "Retention"). Raw events older than this many days (whole UTC days) are removed daily;
# the rollups, conversations and /metrics totals keep their figures. 0 keeps raw events for ever.
MLOPS_RAW_RETENTION_DAYS = envint("MLOPS_RAW_RETENTION_DAYS", 0, minimum=0, maximum=36500)

# --- MLflow (optional; README "MLflow" and docs/mlflow.md). Unset: nothing is logged and nothing needs mlflow.
# The tracking server that pipeline runs and each version's daily figures go to, e.g. http://127.0.0.1:5001.
# MLflow reads its credentials itself (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN).
MLFLOW_TRACKING_URI = envstr("MLFLOW_TRACKING_URI")
# The experiment that holds one MLflow run per pipeline run.
MLFLOW_PIPELINE_EXPERIMENT = envstr("MLFLOW_PIPELINE_EXPERIMENT") or "knowledge-base pipeline"
# How many finished days (in each business's time zone) the worker's job looks back over; a day already in
# MLflow is not logged again.
MLFLOW_DAYS = envint("MLFLOW_DAYS", 7, minimum=1, maximum=90)
