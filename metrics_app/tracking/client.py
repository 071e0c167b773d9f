"""The one way to MLflow: configured or not, the client, an experiment by name.

mlflow-skinny is imported only when MLFLOW_TRACKING_URI is set, so the default
install (requirements.txt) neither needs it nor pays for its import. MLflow
reads its own credentials from the environment (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN).
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

INSTALL_HINT = ".venv/bin/pip install -r requirements-mlflow.txt"

# MLflow retries a request 7 times with a backoff factor of 2 and waits 120 s for an answer: over two minutes
# before a pipeline run learns that the server is down. These are its own variables; an operator's values win.
_REQUEST_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # Else every finished run prints its link (an emoji line) into the command's output and the worker's log.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class MlflowUnavailable(Exception):
    """MLflow is configured but cannot be used: the client is not installed, or the server does not answer."""


def configured() -> bool:
    """True when MLFLOW_TRACKING_URI names a tracking server; without it nothing is logged."""
    return bool(settings.MLFLOW_TRACKING_URI)


def installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def tracking_client() -> MlflowClient:
    """A client of the configured server; MlflowUnavailable when MLflow is not configured or not installed."""
    if not configured():
        raise MlflowUnavailable("MLFLOW_TRACKING_URI is not set")
    if not installed():
        raise MlflowUnavailable(
            f"MLFLOW_TRACKING_URI is set but the MLflow client is not installed: {INSTALL_HINT}"
        )
    for name, value in _REQUEST_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.MLFLOW_TRACKING_URI)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment called `name`, made when missing (two makers at once: the second finds the first's)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def describe_failure(exc: BaseException) -> str:
    """One line for a log or a command error: what MLflow said, without its traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
