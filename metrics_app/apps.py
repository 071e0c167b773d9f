from django.apps import AppConfig
from django.db.models.signals import post_migrate


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
        from metrics_app.tracking import checks as tracking_checks  # noqa: F401  (registers the MLflow check)
        from metrics_app.tracking import schedule

        # The worker's daily MLflow job, made once MLFLOW_TRACKING_URI is set (start.sh migrates at each start).
        post_migrate.connect(schedule.on_post_migrate, sender=self)
        from metrics_app.predictions import schedule as predictions_schedule

        # The worker's daily retraining of the likely-bookings models.
        post_migrate.connect(predictions_schedule.on_post_migrate, sender=self)

        from metrics_app.digests import checks as digest_checks  # noqa: F401  (registers the mail check)
        from metrics_app.digests import schedule as digest_schedule

        # The worker's hourly weekly-digest job, made once MLOPS_WEEKLY_DIGEST is on.
        post_migrate.connect(digest_schedule.on_post_migrate, sender=self, dispatch_uid="weekly-digest-schedule")

        from metrics_app.retention import schedule as retention_schedule

        # The worker's daily retention job, and the events table's partitions ahead (PostgreSQL).
        post_migrate.connect(retention_schedule.on_post_migrate, sender=self, dispatch_uid="retention-schedule")
