"""The service's system checks: its configuration, and the data it has stored.

Every `manage.py` command that runs checks (`check`, `migrate`, `runserver`,
`qcluster`, ...) runs them, and gunicorn.conf.py runs them before gunicorn
serves. An Error stops all of these, so the configuration errors below are how
production refuses insecure settings. The checks of stored data need a
database (`manage.py check --database default`, and `migrate`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connection

from metrics_app.models import Business
from metrics_app.rules import BUSINESS_ID_CHARACTERS, business_id_problem

MAX_IDS_LISTED = 20
MIN_METRICS_TOKEN_LENGTH = 16
MIN_PRODUCTION_SECRET_KEY_LENGTH = 32
# Each listed value keeps its own Prometheus label: the lists bound how many series a metric can have.
MAX_LABEL_VALUES = 200
MAX_LABEL_VALUE_LENGTH = 100
LABEL_LIST_SETTINGS = ("MLOPS_PROMETHEUS_INTENTS", "MLOPS_PROMETHEUS_RESPONSE_TYPES", "MLOPS_PROMETHEUS_MODELS")


# --- Configuration


def _insecure_production_settings() -> list[tuple[str, str]]:
    """(check id, problem) for each setting that production refuses."""
    problems = []
    key = settings.SECRET_KEY
    length = MIN_PRODUCTION_SECRET_KEY_LENGTH
    if key == settings.MLOPS_DEVELOPMENT_SECRET_KEY:
        problems.append(("E001", f"SECRET_KEY is the development key, which is public: set a random value of at "
                                 f"least {length} characters"))
    elif len(key) < length:
        problems.append(("E001", f"SECRET_KEY must be set to a random value of at least {length} characters"))
    if settings.DEBUG:
        problems.append(("E002", "DEBUG must be off"))
    if settings.CORS_ALLOW_ALL_ORIGINS:
        problems.append(("E003", "CORS_ALLOWED_ORIGINS must not be '*'"))
    if not settings.ALLOWED_HOSTS or "*" in settings.ALLOWED_HOSTS:
        problems.append(("E004", "ALLOWED_HOSTS must name the service's host names"))
    if settings.MLOPS_ALLOW_ANONYMOUS_CHAT:
        problems.append(("E005", "MLOPS_ALLOW_ANONYMOUS_CHAT must be off"))
    return problems


@checks.register(checks.Tags.security)
def check_production_settings(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """MLOPS_ENV=production refuses to run with development or open settings."""
    if not settings.IS_PRODUCTION:
        return []
    return [
        checks.Error(f"MLOPS_ENV=production refuses insecure settings: {problem}", id=f"metrics_app.{check_id}")
        for check_id, problem in _insecure_production_settings()
    ]


@checks.register(checks.Tags.security)
def check_metrics_token(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    token = settings.MLOPS_METRICS_TOKEN
    if token and len(token) < MIN_METRICS_TOKEN_LENGTH:
        return [
            checks.Error(
                f"MLOPS_METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_LENGTH} characters when set",
                id="metrics_app.E006",
            )
        ]
    if settings.IS_PRODUCTION and not token:
        return [
            checks.Warning(
                "/metrics is served without a token in production",
                hint="Set MLOPS_METRICS_TOKEN, or keep /metrics reachable only from the Prometheus network.",
                id="metrics_app.W001",
            )
        ]
    return []


@checks.register()
def check_prometheus_label_lists(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    return [
        checks.Error(
            f"{name} may list at most {MAX_LABEL_VALUES} values of at most {MAX_LABEL_VALUE_LENGTH} characters",
            id="metrics_app.E007",
        )
        for name in LABEL_LIST_SETTINGS
        if len(values := getattr(settings, name)) > MAX_LABEL_VALUES
        or any(len(value) > MAX_LABEL_VALUE_LENGTH for value in values)
    ]


# Connection options that set session state when a connection opens: behind a transaction pooler the
# session that took them serves other clients' transactions, and this connection's next ones run elsewhere.
# `options` (settings sent at start-up) PgBouncer refuses or, told to ignore it, drops; `assume_role` is
# Django's SET ROLE on each new connection.
SESSION_STATE_OPTIONS = ("options", "assume_role")


@checks.register()
def check_options_under_transaction_pooling(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    if settings.DATABASE_POOLING != "transaction":
        return []
    options = settings.DATABASES["default"].get("OPTIONS")
    if not isinstance(options, dict):
        return []
    return [
        checks.Error(
            f"DATABASE_POOLING=transaction: DATABASE_URL sets {name}, session state that a transaction pooler "
            "does not keep",
            hint="Set it on the role instead (ALTER ROLE ... SET), which every server session applies.",
            id="metrics_app.E008",
        )
        for name in SESSION_STATE_OPTIONS
        if name in options
    ]


# --- Stored data


@checks.register(checks.Tags.database)
def check_stored_business_ids(app_configs: Any, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Business ids stored before the one rule existed: still readable, but no new event or document may use them."""
    if not databases:
        return []
    try:
        # `migrate` runs this check before it creates the tables, so look for the table first.
        if Business._meta.db_table not in connection.introspection.table_names():
            return []
        ids = list(Business.objects.order_by("id").values_list("id", flat=True))
    except DatabaseError:  # a database that cannot answer is reported by /health, not here
        return []
    broken = [business_id for business_id in ids if business_id_problem(business_id) is not None]
    if not broken:
        return []
    listed = ", ".join(repr(business_id) for business_id in broken[:MAX_IDS_LISTED])
    more = f" and {len(broken) - MAX_IDS_LISTED} more" if len(broken) > MAX_IDS_LISTED else ""
    return [
        checks.Warning(
            f"{len(broken)} stored business id(s) break the business-id rule: {listed}{more}.",
            hint=(
                f"A business id holds only {BUSINESS_ID_CHARACTERS}. Their analytics stay readable, but events, "
                "keys and documents for them are refused; send new events under a valid id."
            ),
            obj="metrics_app.Business",
            id="metrics_app.W010",
        )
    ]
