"""OpenAPI additions: the chat app's plain Django endpoints and the figure definitions.

/health, /track and /track/batch are plain views kept off DRF for speed; this
hook describes them in the schema so that clients and schema-driven tests see
the whole API, with no cost on the hot path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from metrics_app.errors import error_meanings
from metrics_app.ingest.validation import RULES
from metrics_app.ingest.views import MAX_BATCH_EVENTS

ERROR = {"$ref": "#/components/schemas/Error"}


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "metrics_app.keys.auth.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http", "scheme": "bearer",
            "description": "An API key, as `Authorization: Bearer <key>` (or the `X-API-Key` header).",
        }
def _event_schema() -> dict[str, Any]:
    return {
        "type": "object",
        # The limits are the validation's own (metrics_app.ingest.validation.RULES, from metrics_app.rules).
        "properties": {
            name: {**rule.schema, **({} if rule.required else {"nullable": True})} for name, rule in RULES.items()
        },
        "required": [name for name, rule in RULES.items() if rule.required],
        "description": "One AI reply. Unknown fields are ignored and listed back as ignored_fields.",
    }


def _errors(*codes: int) -> dict[str, Any]:
    meanings = error_meanings(codes, {400: "Invalid event(s) or malformed JSON; nothing stored.",
                                      403: "The key may not write this business."})
    return {
        str(code): {"description": meaning, "content": {"application/json": {"schema": ERROR}}}
        for code, meaning in meanings.items()
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def add_chat_endpoints(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "required": ["error", "errors"],
        "properties": {
            "error": {"type": "string"},
            "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        },
    }
    schemas["TrackEvent"] = _event_schema()
    security: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]
    result["components"].setdefault("securitySchemes", {}).setdefault(
        "bearerAuth", ApiKeyAuthenticationScheme.get_security_definition(None, None)  # type: ignore[arg-type]  # uses neither
    )
    stored = {
        "type": "object",
        "required": ["status", "message", "event_id", "timestamp"],
        "properties": {
            "status": {"type": "string"}, "message": {"type": "string"},
            "event_id": {"type": "string", "format": "uuid"}, "timestamp": {"type": "string"},
            "duplicate": {"type": "boolean"}, "ignored_fields": {"type": "array", "items": {"type": "string"}},
        },
    }
    batch_result = {
        "type": "object",
        "required": ["status", "created", "duplicates", "rejected", "results"],
        "properties": {
            "status": {"type": "string", "enum": ["success", "partial"]},
            "created": {"type": "integer"}, "duplicates": {"type": "integer"}, "rejected": {"type": "integer"},
            "timestamp": {"type": "string"},
            "results": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"}, "event_id": {"type": "string", "nullable": True},
                "status": {"type": "string", "enum": ["created", "duplicate", "rejected"]},
                "errors": {"type": "object"}, "ignored_fields": {"type": "array", "items": {"type": "string"}},
            }}},
        },
    }
    paths = result.setdefault("paths", {})
    paths["/health"] = {"get": {
        "operationId": "health", "tags": ["chat app"], "security": [{}],
        "description": "Liveness with a database round trip.",
        "responses": {
            "200": _json({"type": "object", "required": ["status", "service"], "properties": {
                "status": {"type": "string", "enum": ["healthy"]}, "service": {"type": "string"},
                "timestamp": {"type": "string"}, "monitoring": {"type": "string"}}}, "Healthy."),
            "503": _json({"type": "object", "properties": {
                "status": {"type": "string", "enum": ["unhealthy"]},
                "database": {"type": "object", "properties": {
                    "status": {"type": "string", "enum": ["busy", "unreachable"]}}}}},
                "The database is unreachable, or busy (another writer holds SQLite's lock); see Retry-After."),
            **_errors(405),
        },
    }}
    track = {
        "operationId": "track", "tags": ["chat app"], "security": security,
        "description": "Store one event. A repeated event_id answers 200 with duplicate true; the first write stands.",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TrackEvent"}}},
        },
        "responses": {"201": _json(stored, "Stored."), "200": _json(stored, "Duplicate; nothing changed."),
                      **_errors(400, 401, 403, 405, 413, 415, 429, 503)},
    }
    paths["/track"] = {"post": track}
    paths["/track/batch"] = {"post": {
        "operationId": "track_batch", "tags": ["chat app"], "security": security,
        "description": f"Store up to {MAX_BATCH_EVENTS} events (1 MiB); valid events are stored even when others "
                       "are rejected (207).",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["events"], "properties": {"events": {
                "type": "array", "minItems": 1, "maxItems": MAX_BATCH_EVENTS,
                "items": {"$ref": "#/components/schemas/TrackEvent"}}}}}}},
        "responses": {"200": _json(batch_result, "All stored or duplicates."),
                      "207": _json(batch_result, "Some events were rejected."),
                      **_errors(400, 401, 403, 405, 413, 415, 429, 503)},
    }}
    paths["/v1/traces"] = {"post": _otlp_traces(schemas, security)}
    definitions = Path(settings.BASE_DIR) / "docs" / "analytics.md"
    if definitions.exists():
        result.setdefault("info", {})["description"] = definitions.read_text()
    return result


def _otlp_traces(schemas: dict[str, Any], security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """POST /v1/traces: OTLP/HTTP, whose messages the OpenTelemetry protocol defines (JSON shown; protobuf alike)."""
    schemas["RpcStatus"] = {
        "type": "object", "required": ["code", "message"],
        "description": "google.rpc.Status, the body OTLP defines for a refused export (the one answer of this "
                       "service outside the Error shape).",
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                       "details": {"type": "array", "items": {"type": "object"}}},
    }
    answer = {
        "type": "object",
        "properties": {"partialSuccess": {"type": "object", "properties": {
            "rejectedSpans": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "errorMessage": {"type": "string"},
        }}},
    }
    export = {"type": "object", "properties": {"resourceSpans": {"type": "array", "items": {"type": "object"}}}}
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "operationId": "otlp_traces", "tags": ["chat app"], "security": security,
        "description": (
            "OTLP/HTTP trace export (ExportTraceServiceRequest), as application/x-protobuf or application/json, "
            "gzip-encoded or not. Each GenAI span (gen_ai.operation.name chat, generate_content or "
            "text_completion) is stored as one event; other spans are skipped. The answer is in the request's "
            "encoding; partialSuccess counts the spans refused and says why. A malformed export gets 400 with a "
            "google.rpc.Status (so is one of more than 5,000 spans); 413 (past 8 MiB sent or decompressed) must "
            "not be retried."
        ),
        "requestBody": {"required": True, "content": {"application/json": {"schema": export},
                                                      "application/x-protobuf": binary}},
        "responses": {
            "200": {"description": "Stored; refused spans are counted in partialSuccess.",
                    "content": {"application/json": {"schema": answer}, "application/x-protobuf": binary}},
            "400": {"description": "Not an OTLP export.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RpcStatus"}},
                                "application/x-protobuf": binary}},
            **_errors(401, 403, 405, 413, 415, 429, 503),
        },
    }
