"""Rules of the event store that several doors apply: stated once here, imported everywhere.

This module imports nothing of the project, so models, validation, the admin,
the commands and the documents app can all take their rule from it.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError

# A business id is the chat app's `business_id`. It becomes a URL segment, a
# folder name under the documents' raw directory, a Prometheus label and a
# DVC path, so it stays plain: no spaces, slashes, quotes or markup.
BUSINESS_ID_MAX_LENGTH = 255
BUSINESS_ID_CHARACTERS = "letters, digits and . _ : @ -"
_BUSINESS_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")


def business_id_problem(value: Any) -> str | None:
    """Why `value` is not a valid business id, or None when it is one."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > BUSINESS_ID_MAX_LENGTH:
        return f"must be at most {BUSINESS_ID_MAX_LENGTH} characters"
    if not _BUSINESS_ID.fullmatch(value):
        return f"may hold only {BUSINESS_ID_CHARACTERS} (starting with a letter or digit)"
    return None


def validate_business_id(value: Any) -> None:
    """The business-id rule as a Django validator, for model fields and forms."""
    problem = business_id_problem(value)
    if problem is not None:
        raise ValidationError(f"A business id {problem}.", code="invalid_business_id")
