#!/usr/bin/env python
"""Django's command-line utility for the MLOps service."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlops_site.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A bad setting (PORT=abc, DEBUG=maybe): its message names the variable, which is all the user needs.
        sys.exit(f"manage.py: configuration error: {exc}")


if __name__ == "__main__":
    main()
