"""The MLflow setting checked at start-up: configured but not installed is said, never a crash."""

from __future__ import annotations

from typing import Any

from django.core import checks

from metrics_app.tracking.client import INSTALL_HINT, configured, installed


@checks.register()
def check_mlflow_client(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """MLFLOW_TRACKING_URI without mlflow-skinny: the service runs, and logs nothing to MLflow until it is there."""
    if not configured() or installed():
        return []
    return [
        checks.Warning(
            "MLFLOW_TRACKING_URI is set but the MLflow client (mlflow-skinny) is not installed: pipeline runs and "
            "the daily figures are not logged to MLflow",
            hint=INSTALL_HINT,
            id="metrics_app.W020",
        )
    ]
