from django.apps import AppConfig


class MetricsAppConfig(AppConfig):
    name = "metrics_app"
    verbose_name = "AI metrics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from metrics_app import checks, prometheus  # noqa: F401  (checks registers the system checks)

        prometheus.connect()
