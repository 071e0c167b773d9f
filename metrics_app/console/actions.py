"""Admin actions check their selection: a value that is no row id is a 400, where Django's admin answers 500."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from metrics_app.errors import error_response


class CheckedSelectionAdmin(admin.ModelAdmin):
    """A ModelAdmin whose actions refuse a selection that cannot be its model's primary keys.

    Django filters `pk__in=<selection>` unchecked, so `_selected_action=abc`
    (or a number past the column's range) on a page of integer ids raises
    ValueError or OverflowError, a 500, instead of selecting nothing.
    """

    def response_action(  # type: ignore[override]  # Django 5.2's signature; the stubs add 6.0's action_location
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        pk = self.model._meta.pk
        for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
            try:
                pk.run_validators(pk.to_python(value))  # the type, then the range the database can hold
            except ValidationError:
                return error_response(
                    400, "Invalid input", {helpers.ACTION_CHECKBOX_NAME: [f"{value[:50]!r} is not an id of this list"]}
                )
        return super().response_action(request, queryset)
