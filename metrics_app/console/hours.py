"""Opening hours and their exceptions, edited inline on a business's page by staff who may write for it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from metrics_app import access
from metrics_app.models import MIDNIGHT, Business, OpeningException, OpeningHours


def _end(closes: Any) -> tuple[int, int]:
    # Midnight as a closing time sorts after every other time of the day.
    return (24, 0) if closes == MIDNIGHT else (closes.hour, closes.minute)


class _NoOverlapFormSet(forms.BaseInlineFormSet):
    """Refuses intervals of one day (`day_field`) that overlap: an overlap would hide a typing mistake."""

    day_field = ""

    def clean(self) -> None:
        super().clean()
        by_day: dict[Any, list[tuple[tuple[int, int], tuple[int, int]]]] = defaultdict(list)
        for form in self.forms:
            data = getattr(form, "cleaned_data", None) or {}
            if data.get("DELETE") or data.get("opens") is None or data.get("closes") is None:
                continue
            opens = (data["opens"].hour, data["opens"].minute)
            by_day[data.get(self.day_field)].append((opens, _end(data["closes"])))
        for day, intervals in by_day.items():
            intervals.sort()
            for (_, first_end), (second_start, _) in zip(intervals, intervals[1:], strict=False):
                if second_start < first_end:
                    raise forms.ValidationError(f"Intervals of {_day_name(day)} overlap: make them one interval.")


def _day_name(day: Any) -> str:
    if isinstance(day, int):
        return str(OpeningHours.Weekday(day).label)
    return f"{day:%Y-%m-%d}" if day is not None else "that day"


class _WeekFormSet(_NoOverlapFormSet):
    day_field = "weekday"


class _ExceptionFormSet(_NoOverlapFormSet):
    day_field = "date"


class _WritableByStaffOfTheBusiness:
    """Inline permissions: the model's own, and may the user write for this business (metrics_app.access)."""

    def _may_write(self, request: HttpRequest, obj: Business | None) -> bool:
        return obj is None or access.can_write(request.user, obj.pk)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self._may_write(request, obj)  # type: ignore[misc]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._may_write(request, obj)  # type: ignore[misc]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._may_write(request, obj)  # type: ignore[misc]


class OpeningHoursInline(_WritableByStaffOfTheBusiness, admin.TabularInline):
    model = OpeningHours
    formset = _WeekFormSet
    extra = 0
    fields = ("weekday", "opens", "closes")
    ordering = ("weekday", "opens")
    verbose_name = "weekly opening interval"
    verbose_name_plural = "weekly opening hours (in the business's time zone; none set: no after-hours figures)"


class OpeningExceptionInline(_WritableByStaffOfTheBusiness, admin.TabularInline):
    model = OpeningException
    formset = _ExceptionFormSet
    extra = 0
    fields = ("date", "opens", "closes", "note")
    ordering = ("-date", "opens")
    verbose_name = "exception"
    verbose_name_plural = "exceptions (a date closed all day without times, or its own intervals instead of the week's)"
