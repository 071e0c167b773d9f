"""The staff console: the Django admin for events, conversations, prices and keys."""

from metrics_app import admin_keys  # noqa: F401  (businesses and their API keys)
