from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class DocumentsAppConfig(AppConfig):
    name = "documents_app"
    verbose_name = "Business documents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        checks.register(check_pipeline_root, checks.Tags.compatibility)
        from documents_app.erasure import DocumentsHolding
        from metrics_app import holdings

        holdings.register(DocumentsHolding())


def check_pipeline_root(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn at start-up when DOCUMENTS_PIPELINE_ROOT does not hold the pipeline, so uploads and runs would fail."""
    root = Path(settings.DOCUMENTS_PIPELINE_ROOT)
    missing = [name for name in ("dvc.yaml", "params.yaml", ".dvc") if not (root / name).exists()]
    if not missing:
        return []
    return [
        checks.Warning(
            f"DOCUMENTS_PIPELINE_ROOT ({root}) has no {', '.join(missing)}",
            hint="Point DOCUMENTS_PIPELINE_ROOT at a clone of this repository; "
            "pipeline runs from the admin fail otherwise.",
            id="documents_app.W001",
        )
    ]
