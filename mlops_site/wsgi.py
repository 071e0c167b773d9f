"""WSGI entry point for gunicorn: `gunicorn mlops_site.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlops_site.settings")

django_application = get_wsgi_application()

from django.core import checks  # noqa: E402  (after setup: the checks read the apps and settings)
from django.core.exceptions import ImproperlyConfigured  # noqa: E402  (grouped with the check it serves)

# Whatever server loads this module (gunicorn without the project's config, another WSGI server, a
# container's own command), production's refusals hold: a configuration Error stops it before it serves.
_refusals = [message for message in checks.run_checks(tags=[checks.Tags.security]) if message.is_serious()]
if _refusals:
    raise ImproperlyConfigured("; ".join(str(message) for message in _refusals))

from metrics_app.http.bodies import ChunkedBodies  # noqa: E402  (imports DRF: only once Django is set up)

# Chunked request bodies get a Content-Length first, so Django reads them instead of seeing none.
application = ChunkedBodies(django_application)
