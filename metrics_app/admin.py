"""The staff console, the Django admin, lives in metrics_app/console/: importing its pages registers them."""

from metrics_app.console import (  # noqa: F401  (each module registers its pages)
    conversations,
    digests,
    erasures,
    events,
    experiments,
    folder,
    grants,
    keys,
    predictions,
    prices,
)
