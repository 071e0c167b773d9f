"""Rules of the event store that several doors apply: stated once here, imported everywhere.

This module imports nothing of the project, so models, validation, the admin,
the commands and the documents app can all take their rule from it.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

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


# --- Field limits: the ingest validates them, the database's CHECK constraints and the OpenAPI schema
# state the same numbers.
MAX_RESPONSE_TIME_MS = 3_600_000  # one hour: anything longer is a broken clock
MAX_TOKENS = 10_000_000  # well above the largest context windows
MAX_COST_USD = 1000  # per reply
MAX_MESSAGE_LENGTH = 1_000_000  # characters
# A customer's message sent only to be scored (never stored): ten thousand characters fit /track's 64 KiB body.
MAX_USER_MESSAGE_LENGTH = 10_000
MAX_ID_LENGTH = 255  # conversation and session ids
MAX_LABEL_LENGTH = 100  # model name, intent, prompt and knowledge-base versions
MAX_RESPONSE_TYPE_LENGTH = 50


# --- A failed reply: success_rate 0, or response_type "error". The /metrics totals, the
# rollups (in Python and in SQL), the analytics, the console's filter and metrics_totals all ask here.
ERROR_RESPONSE_TYPE = "error"
FAILED_REPLY = Q(success_rate=0) | Q(response_type=ERROR_RESPONSE_TYPE)
FAILED_REPLY_SQL = f"success_rate = 0 OR response_type = '{ERROR_RESPONSE_TYPE}'"


def is_failed_reply(success_rate: Any, response_type: str | None) -> bool:
    return (success_rate is not None and success_rate == 0) or response_type == ERROR_RESPONSE_TYPE


# --- How an event's cost was found, and which of those count as unpriced.
class CostBasis(models.TextChoices):
    """How an event's analytics cost was found."""

    TOKENS = "tokens", "priced from input and output tokens"
    ESTIMATED = "estimated", "estimated: only tokens_used was sent, priced at the input price"
    UNPRICED_CLIENT = "client", "unpriced model: the client's api_cost_usd"
    UNPRICED_NONE = "none", "unpriced model and no client cost"


UNPRICED_BASES: tuple[str, ...] = (CostBasis.UNPRICED_CLIENT.value, CostBasis.UNPRICED_NONE.value)
UNPRICED = Q(cost_basis__in=UNPRICED_BASES)
UNPRICED_SQL = "cost_basis IN ({})".format(", ".join(f"'{basis}'" for basis in UNPRICED_BASES))
ESTIMATED_SQL = f"cost_basis = '{CostBasis.ESTIMATED.value}'"


# A CSV cell that a spreadsheet would run as a formula: text that starts so is written after a quote.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """`value` as a CSV cell that a spreadsheet shows as text, never runs."""
    return "'" + value if value.startswith(FORMULA_START) else value
