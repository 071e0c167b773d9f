"""Saved experiments in the console: made through the experiments service, stopped by an action, never deleted;
and the compare page beside the dashboard.

Staff limited to some businesses see, make and stop only those businesses'
experiments. Once made, an experiment keeps its arms, dimension, split,
metric, lift and start (its verdict could otherwise be slid until it looks
good); only the description may be reworded.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from metrics_app import access
from metrics_app.access import visible_businesses, visible_rows
from metrics_app.console import compare
from metrics_app.console.actions import CheckedSelectionAdmin
from metrics_app.console.lists import BusinessFilter
from metrics_app.experiments import services
from metrics_app.models import Experiment

# What the service takes from the add form, besides the business.
CREATE_FIELDS = ("name", "description", *services.FIXED_FIELDS)


class ExperimentForm(forms.ModelForm):
    """The add form checks the new experiment with the service, so its refusals land on their fields."""

    user: Any = None  # set per request by ExperimentAdmin.get_form

    class Meta:
        model = Experiment
        fields = ("business", *CREATE_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        started = self.fields.get("started_at")
        if started is not None:
            # An initial "now" goes stale while the form is filled in, and a start in the past is refused.
            started.required = False
            started.initial = None
            started.help_text = "Empty: now. Later is allowed; earlier is not. Only conversations from here on count."

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.instance.pk or self.errors:
            return data
        business = data["business"]
        if not access.can_write(self.user, business.pk):
            self.add_error("business", "You may not make experiments for that business.")
            return data
        now = timezone.now()
        data["started_at"] = data.get("started_at") or now
        try:
            services.check_new_experiment(business, created_by=self.user, now=now,
                                          **{name: data[name] for name in CREATE_FIELDS})
        except ValidationError as refused:
            self.add_error(None, refused)
        return data


@admin.register(Experiment)
class ExperimentAdmin(CheckedSelectionAdmin):
    """Experiments of the businesses the user may see; the compare page is its own URL beside them."""

    form = ExperimentForm
    list_display = ("name", "business", "dimension", "arms", "split_a", "primary_metric", "started_at", "ended_at",
                    "running", "results")
    list_filter = (BusinessFilter, "dimension", "primary_metric", ("ended_at", admin.EmptyFieldListFilter))
    list_select_related = ("business",)
    search_fields = ("name", "variant_a", "variant_b")
    ordering = ("-started_at", "-id")
    actions = ["stop_selected"]
    change_list_template = "admin/metrics_app/experiment/change_list.html"
    readonly_fields = ("ended_at", "created_at", "created_by", "results")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Experiment]:
        return visible_rows(request.user, super().get_queryset(request))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "business":
            kwargs["queryset"] = visible_businesses(request.user).order_by("id")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request: HttpRequest, obj: Experiment | None = None, change: bool = False,
                 **kwargs: Any) -> Any:
        form: Any = super().get_form(request, obj, change, **kwargs)
        form.user = request.user  # the class is made for this request by modelform_factory
        return form

    def get_fields(self, request: HttpRequest, obj: Experiment | None = None) -> Any:
        if obj is None:
            return ("business", *CREATE_FIELDS)
        return ("business", *CREATE_FIELDS, "ended_at", "created_at", "created_by", "results")

    def get_readonly_fields(self, request: HttpRequest, obj: Experiment | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # Made once: the verdict reads the arms from the start, so only the hypothesis may be reworded.
        return ("business", "name", *services.FIXED_FIELDS, *self.readonly_fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and access.may_write(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or access.can_write(request.user, obj.business_id))

    def has_delete_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        # Stop instead. A deleted experiment could be made again under the same name, which is the clients'
        # assignment salt, with a later start: the window slid after all, and the record of what was planned lost.
        return False

    def save_model(self, request: HttpRequest, obj: Experiment, form: forms.ModelForm, change: bool) -> None:
        if change:
            services.describe_experiment(obj, form.cleaned_data["description"])
            return
        data = form.cleaned_data
        made = services.create_experiment(data["business"], created_by=request.user,
                                          **{name: data[name] for name in CREATE_FIELDS})
        obj.pk, obj.created_at, obj.created_by = made.pk, made.created_at, made.created_by

    @admin.display(description="arms")
    def arms(self, obj: Experiment) -> str:
        return f"{obj.variant_a} vs {obj.variant_b}"

    @admin.display(description="running", boolean=True)
    def running(self, obj: Experiment) -> bool:
        return obj.is_running

    @admin.display(description="results")
    def results(self, obj: Experiment) -> str:
        if obj.pk is None:
            return ""
        url = reverse("admin:metrics_app_experiment_compare")
        return format_html('<a href="{}?experiment={}">results</a>', url, obj.pk)

    @admin.action(description="Stop the selected experiments", permissions=["change"])
    def stop_selected(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        stopped = 0
        for experiment in queryset.filter(ended_at__isnull=True):
            if access.can_write(request.user, experiment.business_id):
                services.stop_experiment(experiment)
                stopped += 1
        self.message_user(request, f"Stopped {stopped} experiment(s).", messages.SUCCESS)

    def get_urls(self) -> list:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("compare/", self.admin_site.admin_view(compare.CompareView.as_view(model_admin=self)),
                 name=f"{prefix}_compare"),
            *super().get_urls(),
        ]
