"""The model price table in the console.
"""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from metrics_app.console.actions import CheckedSelectionAdmin
from metrics_app.models import ModelPrice


@admin.register(ModelPrice)
class ModelPriceAdmin(CheckedSelectionAdmin):
    list_display = (
        "model_pattern", "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok",
        "cache_write_input_usd_per_mtok", "valid_from",
        "source_as_of", "source_link",
    )
    list_filter = ("valid_from", "source_as_of")
    search_fields = ("model_pattern",)
    ordering = ("model_pattern", "-valid_from")
    readonly_fields = ("updated_at",)

    @admin.display(description="source")
    def source_link(self, obj: ModelPrice) -> str:
        return format_html(
            '<a href="{}" rel="noopener noreferrer" target="_blank">{}</a>', obj.source_url, obj.source_url
        )
