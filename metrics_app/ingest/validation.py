"""Validation of tracking events, kept lean because every event goes through it.

A table of field rules drives one loop; each rule is a small function that
returns the clean value or raises `FieldError` with the reason. No framework
serializer sits on this path: the batch endpoint checks hundreds of events per
request.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from metrics_app import horizon
from metrics_app.ingest import sentiment
from metrics_app.models import SentimentSource
from metrics_app.rules import (
    BUSINESS_ID_MAX_LENGTH,
    MAX_COST_USD,
    MAX_ID_LENGTH,
    MAX_LABEL_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_RESPONSE_TIME_MS,
    MAX_RESPONSE_TYPE_LENGTH,
    MAX_TOKENS,
    MAX_USER_MESSAGE_LENGTH,
    business_id_problem,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_FUTURE_SLACK = timedelta(days=1)
_COST_STEP = Decimal("0.000001")
_RATE_STEP = Decimal("0.0001")
_SENTIMENT_STEP = Decimal("0.0001")  # VADER's own rounding of its compound score


class FieldError(ValueError):
    pass


def _number(value: Any) -> int | float:
    # bool is an int in Python but not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError("must be a JSON number")
    return value


def _integer(maximum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = _number(value)
        if isinstance(number, float):
            if not number.is_integer():
                raise FieldError("must be a whole number")
            number = int(number)
        if number < 0 or number > maximum:
            raise FieldError(f"must be between 0 and {maximum}")
        return number

    return check


def _decimal(maximum: int, step: Decimal) -> Callable[[Any], Decimal]:
    def check(value: Any) -> Decimal:
        number = _number(value)
        if number < 0 or number > maximum:
            raise FieldError(f"must be between 0 and {maximum}")
        try:
            return Decimal(repr(number)).quantize(step, rounding=ROUND_HALF_EVEN)
        except InvalidOperation:
            raise FieldError("is not a finite number") from None

    return check


def _text(max_length: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            raise FieldError("must be a string")
        if len(value) > max_length:
            raise FieldError(f"must be at most {max_length} characters")
        if _CONTROL.search(value):
            raise FieldError("must not contain control characters")
        # An empty string says nothing; it is stored as absent.
        return value.strip() or None

    return check


def _sentiment(value: Any) -> Decimal:
    number = _number(value)
    if not math.isfinite(number):  # orjson refuses NaN and infinities; OTLP's doubles carry them
        raise FieldError("is not a finite number")
    if number < -1 or number > 1:
        raise FieldError("must be between -1 and 1")
    return Decimal(repr(number)).quantize(_SENTIMENT_STEP, rounding=ROUND_HALF_EVEN)


def _message(value: Any) -> str:
    # The reason never quotes the text: it is the customer's own words.
    if not isinstance(value, str):
        raise FieldError("must be a string")
    if len(value) > MAX_USER_MESSAGE_LENGTH:
        raise FieldError(f"must be at most {MAX_USER_MESSAGE_LENGTH} characters")
    return value


def check_business_id(value: Any) -> str:
    """The one business-id rule (metrics_app.rules), raising FieldError like the other field rules."""
    problem = business_id_problem(value)
    if problem is not None:
        raise FieldError(problem)
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError("must be true or false")
    return value


def _event_id(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):  # made by the service itself (an OTLP span's id); JSON never gives one
        return value
    if not isinstance(value, str) or len(value) > 45:
        raise FieldError("must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise FieldError("must be a UUID string") from None


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):  # made by the service itself (an OTLP span's end); JSON never gives one
        moment = value
    elif not isinstance(value, str) or len(value) > 40:
        raise FieldError("must be an ISO 8601 date-time string")
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise FieldError("must be an ISO 8601 date-time string") from None
    if moment.tzinfo is None:  # the seed sends utcnow().isoformat(): naive means UTC
        moment = moment.replace(tzinfo=UTC)
    if moment < _EARLIEST:
        raise FieldError("must not be before 2000-01-01")
    now = datetime.now(UTC)
    kept_from = horizon.earliest_accepted(now)
    if kept_from is not None and moment < kept_from:
        # Retention may have removed this event's twin already: storing it could count it twice.
        raise FieldError(
            f"must not be before {kept_from:%Y-%m-%d} (UTC): raw events are kept "
            f"{horizon.retention_days()} days (MLOPS_RAW_RETENTION_DAYS)"
        )
    if moment > now + _FUTURE_SLACK:
        raise FieldError("must not be more than a day in the future")
    return moment


@dataclass(frozen=True)
class Rule:
    """A field's check, and what the OpenAPI schema says of it (so both state the same limits)."""

    check: Callable[[Any], Any]
    schema: dict[str, Any]
    required: bool = False
    default: Any = None
    stored: bool = True  # False: read by check_event and dropped there, never a column


def _integer_rule(maximum: int, **options: Any) -> Rule:
    return Rule(_integer(maximum), {"type": "integer", "minimum": 0, "maximum": maximum}, **options)


def _decimal_rule(maximum: int, step: Decimal, **options: Any) -> Rule:
    return Rule(_decimal(maximum, step), {"type": "number", "minimum": 0, "maximum": maximum}, **options)


def _text_rule(max_length: int) -> Rule:
    return Rule(_text(max_length), {"type": "string", "maxLength": max_length})


_FLAG = Rule(_boolean, {"type": "boolean"}, default=False)

RULES: dict[str, Rule] = {
    "business_id": Rule(check_business_id, {"type": "string", "maxLength": BUSINESS_ID_MAX_LENGTH}, required=True),
    "event_id": Rule(_event_id, {"type": "string", "format": "uuid"}),
    "conversation_id": _text_rule(MAX_ID_LENGTH),
    "session_id": _text_rule(MAX_ID_LENGTH),
    "response_time_ms": _integer_rule(MAX_RESPONSE_TIME_MS, required=True),
    "success_rate": _decimal_rule(1, _RATE_STEP, default=Decimal(1)),
    "tokens_used": _integer_rule(MAX_TOKENS, required=True),
    "input_tokens": _integer_rule(MAX_TOKENS),
    "output_tokens": _integer_rule(MAX_TOKENS),
    "cache_read_input_tokens": _integer_rule(MAX_TOKENS),
    "cache_write_input_tokens": _integer_rule(MAX_TOKENS),
    "reasoning_output_tokens": _integer_rule(MAX_TOKENS),
    "api_cost_usd": _decimal_rule(MAX_COST_USD, _COST_STEP),
    "model_name": _text_rule(MAX_LABEL_LENGTH),
    "intent_detected": _text_rule(MAX_LABEL_LENGTH),
    "appointment_requested": _FLAG,
    "appointment_booked": _FLAG,
    "human_handoff_requested": _FLAG,
    "user_message_length": _integer_rule(MAX_MESSAGE_LENGTH),
    "ai_response_length": _integer_rule(MAX_MESSAGE_LENGTH),
    "response_type": _text_rule(MAX_RESPONSE_TYPE_LENGTH),
    "prompt_version": _text_rule(MAX_LABEL_LENGTH),
    "kb_version": _text_rule(MAX_LABEL_LENGTH),
    "timestamp": Rule(_timestamp, {"type": "string", "format": "date-time"}),
    "user_sentiment": Rule(_sentiment, {
        "type": "number", "minimum": -1, "maximum": 1,
        "description": "The client's own score of the customer's message, -1 to +1 (kept to 4 decimals); "
                       "it wins over user_message's score.",
    }),
    "user_message": Rule(_message, {
        "type": "string", "maxLength": MAX_USER_MESSAGE_LENGTH, "writeOnly": True,
        "description": "The customer's message, scored for user_sentiment (VADER's compound score of its first "
                       f"{sentiment.SCORED_CHARACTERS} characters) and dropped: never stored or logged.",
    }, stored=False),
}
# The columns the ingest writes: every field but the ones dropped once read.
# The stored columns that validation fills: the stored fields, then who scored user_sentiment.
FIELD_NAMES = (*(name for name, rule in RULES.items() if rule.stored), "sentiment_source")
# Unknown field names are listed back, but only this many, each cut short.
_MAX_IGNORED_LISTED = 20


def _check_token_subsets(values: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """Cached and reasoning tokens are parts of the input and output totals: sent with them, never more."""
    tokens_in, tokens_out = values["input_tokens"], values["output_tokens"]
    read, write = values["cache_read_input_tokens"], values["cache_write_input_tokens"]
    cached = [name for name, count in (("cache_read_input_tokens", read), ("cache_write_input_tokens", write))
              if count is not None]
    if cached and tokens_in is None:
        for name in cached:
            errors[name] = ["needs input_tokens, of which it is a part"]
    elif cached and (read or 0) + (write or 0) > tokens_in:
        name = "cache_read_input_tokens" if (read or 0) > tokens_in or not write else "cache_write_input_tokens"
        errors[name] = [
            f"cache_read_input_tokens + cache_write_input_tokens ({(read or 0) + (write or 0)}) must not exceed "
            f"input_tokens ({tokens_in}): input_tokens counts every prompt token, cached ones included"
        ]
    reasoning = values["reasoning_output_tokens"]
    if reasoning is not None and tokens_out is None:
        errors["reasoning_output_tokens"] = ["needs output_tokens, of which it is a part"]
    elif reasoning is not None and reasoning > tokens_out:
        errors["reasoning_output_tokens"] = [
            f"must not exceed output_tokens ({tokens_out}): output_tokens counts reasoning tokens too"
        ]


def _score(values: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """Score user_message into user_sentiment, unless the client sent a score of its own (that one wins); drop it.

    The text goes no further: it is taken out of the values before they reach any other code.
    """
    message = values.pop("user_message", None)
    values["sentiment_source"] = None
    if values.get("user_sentiment") is not None:
        values["sentiment_source"] = SentimentSource.CLIENT.value
    elif message and not errors:
        values["user_sentiment"] = sentiment.score(message)
        values["sentiment_source"] = SentimentSource.VADER.value


@dataclass
class CheckedEvent:
    """The outcome of validating one event: clean values or errors, never both."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    ignored_fields: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_event(payload: Any, *, default_business_id: str | None = None) -> CheckedEvent:
    """Validate one event payload against the field rules.

    `default_business_id` fills a missing `business_id` (a business API key
    implies its business). `null` is the same as an absent field.
    """
    result = CheckedEvent()
    if not isinstance(payload, dict):
        result.errors["non_field_errors"] = ["an event must be a JSON object"]
        return result
    values = result.values
    errors = result.errors
    for name, rule in RULES.items():
        raw = payload.get(name)
        if raw is None and name == "business_id" and default_business_id is not None:
            # The key's business is checked like a sent one: a stored id that breaks the rule stays
            # readable, but no new event is written under it.
            raw = default_business_id
        if raw is None:
            if rule.required:
                errors[name] = ["this field is required"]
            else:
                values[name] = rule.default
            continue
        try:
            values[name] = rule.check(raw)
        except FieldError as exc:
            errors[name] = [str(exc)]
    if not errors:
        _check_token_subsets(values, errors)
    _score(values, errors)
    unknown = [key for key in payload if key not in RULES]
    if unknown:
        result.ignored_fields = [str(key)[:100] for key in unknown[:_MAX_IGNORED_LISTED]]
    if errors:
        result.values = {}
    return result
