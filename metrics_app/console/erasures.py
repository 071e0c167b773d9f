"""The erasure records: who erased which business's conversation, when, and why. Read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from metrics_app.access import visible_rows
from metrics_app.models import ErasureRecord


@admin.register(ErasureRecord)
class ErasureRecordAdmin(admin.ModelAdmin):
    list_display = ("erased_at", "kind", "business_id", "erased_by_name", "events", "conversations", "reason")
    list_filter = ("kind",)
    search_fields = ("business_id", "conversation_digest")
    search_help_text = "A business id, or the SHA-256 digest of a conversation (business id, 0x1f, conversation id)."
    ordering = ("-erased_at",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ErasureRecord]:
        return visible_rows(request.user, super().get_queryset(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by the erasure itself

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the record of an erasure is not itself erased
