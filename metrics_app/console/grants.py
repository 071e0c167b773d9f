"""Staff business access in the console: which businesses each staff user may see. Only superusers grant.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from metrics_app.console.actions import CheckedSelectionAdmin
from metrics_app.console.lists import BusinessFilter
from metrics_app.models import StaffBusinessAccess


class StaffBusinessAccessForm(forms.ModelForm):
    """A grant names one business, or says every business with a box of its own: an empty field is not a grant."""

    every_business = forms.BooleanField(
        required=False, help_text="Grant every business, present and future, instead of one."
    )

    class Meta:
        model = StaffBusinessAccess
        fields = ("user", "business", "every_business", "weekly_digest")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["business"].help_text = "The business this user may see."
        if self.instance.pk and self.instance.grants_every_business:
            self.initial["every_business"] = True

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("every_business") and data.get("business"):
            self.add_error("business", "Leave the business empty when granting every business.")
        elif not data.get("every_business") and not data.get("business"):
            self.add_error("business", "Choose a business, or tick 'every business'.")
        return data


@admin.register(StaffBusinessAccess)
class StaffBusinessAccessAdmin(CheckedSelectionAdmin):
    """What each staff user may see: one business per row, or every business.

    Only superusers grant: nobody widens their own."""

    form = StaffBusinessAccessForm
    list_display = ("user", "grant", "weekly_digest")
    list_filter = (BusinessFilter,)
    list_select_related = ("user", "business")
    search_fields = ("user__username", "business__id", "business__name")
    autocomplete_fields = ("business",)

    @admin.display(description="may see", ordering="business")
    def grant(self, obj: StaffBusinessAccess) -> str:
        return "every business" if obj.grants_every_business else str(obj.business_id)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: StaffBusinessAccess | None = None) -> bool:
        return request.user.is_superuser

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: StaffBusinessAccess | None = None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: StaffBusinessAccess | None = None) -> bool:
        return request.user.is_superuser
