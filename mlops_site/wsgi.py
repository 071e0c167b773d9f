"""WSGI entry point for gunicorn: `gunicorn mlops_site.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlops_site.settings")

django_application = get_wsgi_application()

from metrics_app.http.bodies import ChunkedBodies  # noqa: E402  (imports DRF: only once Django is set up)

# Chunked request bodies get a Content-Length first, so Django reads them instead of seeing none.
application = ChunkedBodies(django_application)
