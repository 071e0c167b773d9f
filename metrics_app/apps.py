from django.apps import AppConfig


class MetricsAppConfig(AppConfig):
    name = "metrics_app"
    verbose_name = "AI metrics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported for what they register: the system checks, and the OpenAPI description of key authentication.
        from metrics_app import checks  # noqa: F401  (registers the system checks)
        from metrics_app.api import schema  # noqa: F401  (registers the OpenAPI extension for key authentication)
        from metrics_app.monitoring import prometheus

        prometheus.connect()
