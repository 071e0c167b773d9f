"""API key authentication and the per-key rate limit shared by all server processes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.http import HttpRequest
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from metrics_app import database
from metrics_app.keys import rate_limit
from metrics_app.models import KEY_PREFIX_MARK, ApiKey


class KeyRejected(Exception):
    """The request carried a key that is unknown, revoked or expired."""


def raw_key_from(request: HttpRequest) -> str | None:
    """The key sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`.

    Credentials of another kind are refused rather than ignored: a client that
    sends them means to authenticate and must learn that it did not.
    """
    header = request.META.get("HTTP_AUTHORIZATION", "").strip()
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise KeyRejected("send the key as Authorization: Bearer <key>")
        return value.strip()
    value = request.META.get("HTTP_X_API_KEY", "").strip()
    return value or None


def find_key(raw: str) -> ApiKey:
    """The usable key matching `raw`, or KeyRejected. The hash is compared in constant time."""
    mark, _, rest = raw.partition("_")
    prefix, _, secret = rest.partition("_")
    if mark != KEY_PREFIX_MARK or not prefix or not secret or len(raw) > 200:
        raise KeyRejected("malformed API key")
    key = _key_with_prefix(prefix)
    if key is None or not key.matches(raw):
        raise KeyRejected("unknown API key")
    if not key.is_usable:
        raise KeyRejected("this API key is revoked or expired")
    return key


def _key_with_prefix(prefix: str) -> ApiKey | None:
    """The key with this prefix, read fresh on every request (a revoked key stops at once).

    A raw query: building the ORM's query was a third of a /track request's time.
    """
    table = connection.ops.quote_name(ApiKey._meta.db_table)
    found = list(ApiKey.objects.raw(f"SELECT * FROM {table} WHERE prefix = %s", [prefix]))
    return found[0] if found else None


def authenticate_key(request: HttpRequest) -> ApiKey | None:
    """The request's key, None when it sent none, KeyRejected when it is bad."""
    raw = raw_key_from(request)
    return None if raw is None else find_key(raw)


def seconds_until_allowed(key: ApiKey) -> int:
    """Count one request against the key's per-minute budget; 0 when it is allowed.

    Otherwise the number of seconds until the current minute ends. The counter
    is shared by every worker process (metrics_app/keys/rate_limit.py); when it
    cannot answer, LimiterUnavailable (503) rather than an uncounted request.
    """
    # `is None`, not `or`: a key's own limit is never silently replaced by the (larger) default.
    own = key.rate_limit_per_minute
    limit = settings.MLOPS_KEY_RATE_LIMIT_PER_MINUTE if own is None else own
    now = time.time()
    minute = int(now // 60)
    count = rate_limit.count_request(key, minute, limit)
    if count == 1:
        _note_use(key)
    if count > limit:
        return max(1, int(60 - (now % 60)) + 1)
    return 0


def _note_use(key: ApiKey) -> None:
    """Record the key's last use (once a minute, at its first request), unless the database is busy.

    A note skipped while another writer holds SQLite's lock is made at the next
    minute's first request; waiting for the lock would hold up a read that
    needs no write.
    """
    try:
        with database.sqlite_lock_wait(connection, 0), transaction.atomic():
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    except OperationalError as exc:
        if not database.is_busy(exc):
            raise


@dataclass
class ApiKeyUser:
    """The identity a request gets from a key: authenticated, never staff."""

    key: ApiKey
    is_authenticated: bool = True
    is_anonymous: bool = False
    is_staff: bool = False
    is_superuser: bool = False
    is_active: bool = True

    @property
    def pk(self) -> None:
        return None

    def __str__(self) -> str:
        return f"key {self.key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """DRF authentication by API key, with the shared rate limit."""

    def authenticate(self, request: Request) -> tuple[ApiKeyUser, ApiKey] | None:
        try:
            key = authenticate_key(request._request)
        except KeyRejected as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        if key is None:
            return None
        wait = seconds_until_allowed(key)
        if wait:
            raise exceptions.Throttled(wait=wait, detail="Too many requests for this API key")
        return ApiKeyUser(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="mlops"'
