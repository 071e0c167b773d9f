"""Fixtures shared by the whole suite: clients, keys, staff users, stored events, and a real running service."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from metrics_app.ingest import services
from metrics_app.ingest.validation import check_event
from metrics_app.keys import services as key_services
from metrics_app.models import AIMetric, Business, ModelPrice
from metrics_app.pricing import services as pricing
from tests.helpers import (
    LiveService,
    MlflowServer,
    fold_all,
    mlflow_server_binary,
    pgbouncer_admin,
    require,
    staff_user,
    start_mlflow_server,
    start_service,
    stop_process_group,
    stop_service,
)

# --- Which tests a pass runs.

_DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback",
                      "live_server"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database-tests-only", action="store_true",
        help="run only the tests that reach the pass's database (test.sh's PostgreSQL pass: the others, which "
             "pytest-django keeps away from any database, answer the same on every one and run in the SQLite pass)",
    )


def reaches_the_database(item: pytest.Item) -> bool:
    """Whether pytest-django lets the test reach the pass's database: a django_db mark or a database fixture."""
    return item.get_closest_marker("django_db") is not None or bool(
        _DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--database-tests-only"):
        return
    kept = [item for item in items if reaches_the_database(item)]
    left = [item for item in items if not reaches_the_database(item)]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("--database-tests-only"):
        return "--database-tests-only: the tests that touch no database are left to the SQLite pass"
    return None


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup) -> Iterator[None]:
    """pytest-django's test database; behind PgBouncer, its pooled server connections are closed before it is
    dropped: PostgreSQL refuses DROP DATABASE while any session is connected to it."""
    from django.db import connection

    name = connection.settings_dict["NAME"]
    yield
    if os.environ.get("MLOPS_TEST_PGBOUNCER_ADMIN_URL") and connection.vendor == "postgresql":
        connection.close()
        pgbouncer_admin(f"KILL {name}")  # KILL also holds new clients back until RESUME
        pgbouncer_admin(f"RESUME {name}")


@pytest.fixture(autouse=True)
def _forget_known_businesses() -> Iterator[None]:
    # The ingest service remembers businesses it created; tests roll them back.
    services._known_businesses.clear()
    pricing.forget_table()  # each test's prices are its own
    yield
    services._known_businesses.clear()
    pricing.forget_table()


@pytest.fixture
def api() -> Client:
    return Client()


@pytest.fixture
def seed_event() -> dict[str, Any]:
    """The event of the seed's curl example, as the chat app sends it today."""
    return {
        "business_id": "test-business",
        "response_time_ms": 1500,
        "tokens_used": 150,
        "api_cost_usd": 0.002,
        "intent_detected": "general",
        "appointment_requested": False,
        "user_message_length": 45,
        "ai_response_length": 120,
        "response_type": "text",
    }


@pytest.fixture
def business(db) -> Business:
    return Business.objects.create(id="acme-dental", name="Acme Dental", time_zone="Europe/London")


@pytest.fixture
def make_key(db) -> Callable[..., tuple[Any, str]]:
    def make(business: Business | None, **options: Any):
        options.setdefault("name", "test key")
        return key_services.create_api_key(business=business, **options)

    return make


@pytest.fixture
def published_prices(db) -> None:
    """The published prices as the migrations ship them, also after a transactional test emptied every table."""
    if not ModelPrice.objects.exists():
        ModelPrice.objects.bulk_create(ModelPrice(**row) for row in pricing.published_prices())


@pytest.fixture
def live_service(transactional_db, tmp_path) -> Iterator[Callable[..., LiveService]]:
    """Start the real service (gunicorn, N workers) on the test database; stopped after the test."""
    started: list[LiveService] = []

    def start(**options: Any) -> LiveService:
        service = start_service(tmp_path, **options)
        started.append(service)
        return service

    yield start
    for service in started:
        stop_service(service)


# --- The staff console: staff users, limited staff, and events stored as /track stores them.

PASSWORD = "console-test-password-9"


def store(**fields: Any) -> AIMetric:
    """Store one event through validation and record_events, as /track would, and fold it as the folder would."""
    payload = {"business_id": "acme-dental", "response_time_ms": 1000, "tokens_used": 100, **fields}
    payload.setdefault("event_id", str(uuid.uuid4()))
    if isinstance(payload.get("timestamp"), datetime):
        payload["timestamp"] = payload["timestamp"].isoformat()
    checked = check_event(payload)
    if not checked.ok:
        raise ValueError(f"a test event is invalid: {checked.errors}")
    services.record_events([checked.values])
    fold_all()
    return AIMetric.objects.get(business_id=payload["business_id"], event_id=payload["event_id"])


@pytest.fixture
def store_event(db) -> Callable[..., AIMetric]:
    return store


@pytest.fixture
def superuser(db) -> User:
    return User.objects.create_superuser("boss", "boss@example.com", PASSWORD)


def make_staff(username: str, *, businesses: list[str] | None = None, perms: tuple[str, ...] = ()) -> User:
    """A staff user with the given `app_label.codename` permissions, granted every business or only `businesses`."""
    user = staff_user(username, businesses=businesses, password=PASSWORD)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


CONSOLE_VIEW_PERMS = (
    "metrics_app.view_aimetric", "metrics_app.view_conversation", "metrics_app.view_modelprice",
    "metrics_app.view_business", "metrics_app.view_apikey",
)


@pytest.fixture
def staff_factory(db) -> Callable[..., User]:
    def factory(
        username: str = "staff", businesses: list[str] | None = None, perms: tuple[str, ...] = CONSOLE_VIEW_PERMS
    ) -> User:
        return make_staff(username, businesses=businesses, perms=perms)

    return factory


@pytest.fixture
def logged_in(db) -> Callable[[User], Client]:
    """A test client with `user`'s admin session."""

    def login(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return login


# --- MLflow: one real tracking server for the run, and the service pointed at it.


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on loopback (SQLite store, served artifacts), shared by the run's tests:
    each test names its own businesses and experiment, so none reads another's runs."""
    from metrics_app.tracking.client import installed

    require(installed(), "the MLflow client (pip install -r requirements-mlflow.txt)")
    binary = mlflow_server_binary()
    require(binary is not None, "an MLflow tracking server (.venv-mlflow: pip install -r requirements-mlflow-server.txt)")
    assert binary is not None
    server = start_mlflow_server(binary, tmp_path_factory.mktemp("mlflow"))
    yield server
    stop_process_group(server.process, timeout=3)  # uvicorn's graceful stop waits 10 s; nothing is left to save


@pytest.fixture
def mlflow_tracking(mlflow_server: MlflowServer, settings, monkeypatch) -> MlflowServer:
    """The service's settings pointed at the test server, with MLflow's retries off so a failure shows at once."""
    settings.MLFLOW_TRACKING_URI = mlflow_server.url
    settings.MLFLOW_PIPELINE_EXPERIMENT = f"knowledge-base pipeline {uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return mlflow_server
