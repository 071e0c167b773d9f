"""Who may call the analytics and conversations API: both permissions ask metrics_app.access, the one rule.
"""

from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from metrics_app import access


class CanRead(permissions.BasePermission):
    """A staff session or a read key; a key or user that may see no business is refused."""

    message = "This key or user may not read analytics (needs the read scope or a staff account)"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return access.visible_business_ids(user) != set()


class CanRecordOutcome(permissions.BasePermission):
    message = "Recording an outcome needs a staff session or an API key with the ingest scope"

    def has_permission(self, request: Request, view: Any) -> bool:
        return access.may_write(request.user)
