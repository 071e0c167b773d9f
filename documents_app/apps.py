from django.apps import AppConfig


class DocumentsAppConfig(AppConfig):
    name = "documents_app"
    verbose_name = "Business documents"
    default_auto_field = "django.db.models.BigAutoField"
