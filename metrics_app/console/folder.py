"""The folder's page in the console: how far it has folded, its backlog, lag and last error.

The state says nothing about any one business, but an error message may
quote a row, so only staff who see every business see the page.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from metrics_app import access
from metrics_app.folding import services as folding
from metrics_app.models import FolderState


@admin.register(FolderState)
class FolderStateAdmin(admin.ModelAdmin):
    list_display = ("name", "running", "backlog_events", "lag_seconds", "folded_through", "folded_at",
                    "events_folded", "errors", "last_error_at")
    readonly_fields = ("name", "running", "backlog_events", "lag_seconds", "folded_through", "folded_at",
                       "events_folded", "holder", "lease_until", "errors", "last_error", "last_error_at")
    fields = readonly_fields

    def _status(self) -> folding.FolderStatus:
        return folding.status()  # a few index reads; the list has one row

    @admin.display(boolean=True, description="running")
    def running(self, obj: FolderState) -> bool:
        return self._status().running

    @admin.display(description="backlog (events)")
    def backlog_events(self, obj: FolderState) -> int:
        return self._status().backlog_events

    @admin.display(description="lag (s)")
    def lag_seconds(self, obj: FolderState) -> str:
        return f"{self._status().lag_seconds:.1f}"

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) and access.sees_every_business(request.user)

    def has_view_permission(self, request: HttpRequest, obj: FolderState | None = None) -> bool:
        return super().has_view_permission(request, obj) and access.sees_every_business(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: FolderState | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: FolderState | None = None) -> bool:
        return False
