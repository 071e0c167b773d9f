"""The events list's CSV export: streamed, bounded, and safe to open in a spreadsheet.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import Any

from metrics_app.rules import spreadsheet_text

# A CSV export streams at most this many rows; narrow the filters for more.
MAX_EXPORT_ROWS = 1_000_000

# Columns of the CSV export, in order: every stored field but the internal row id.
EXPORT_FIELDS = (
    "event_id", "business_id", "conversation_id", "session_id", "timestamp", "created_at",
    "response_time_ms", "success_rate", "tokens_used", "input_tokens", "output_tokens",
    "cache_read_input_tokens", "cache_write_input_tokens", "reasoning_output_tokens", "api_cost_usd",
    "model_name", "intent_detected", "response_type", "appointment_requested", "appointment_booked",
    "human_handoff_requested", "user_message_length", "user_sentiment", "sentiment_source", "ai_response_length",
    "prompt_version", "kb_version",
    "cost_usd", "cost_basis", "cache_savings_usd",
)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return spreadsheet_text(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class _Echo:
    """A file-like object whose write returns the line, for streaming csv.writer output."""

    def write(self, value: str) -> str:
        return value


def stream_csv(rows: Iterable[tuple[Any, ...]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for row in rows:
        yield writer.writerow([_csv_cell(value) for value in row])
