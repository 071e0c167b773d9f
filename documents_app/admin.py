"""Admin for business documents and pipeline runs.

Staff upload and delete documents here, and start a run of one stage or the
whole pipeline; the run goes to the background worker (`manage.py qcluster`).
Starting a run needs the `documents_app.run_pipeline` permission.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from documents_app import services
from documents_app.models import Document, PipelineRun, PipelineStage
from metrics_app import access

RUN_PERMISSION = "documents_app.run_pipeline"
# Multipart framing around the file; a body larger than the file limit plus this is refused unread.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


class DocumentUploadForm(forms.ModelForm):
    file = forms.FileField(help_text="PDF, DOCX, TXT or Markdown.")

    class Meta:
        model = Document
        fields = ["business"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        business, upload = cleaned.get("business"), cleaned.get("file")
        if business is not None and upload is not None:
            try:
                services.check_upload(business, upload)
            except services.DocumentRejected as exc:
                self.add_error("file", str(exc))
        return cleaned


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ("name", "business", "format", "size", "status", "skip_reason", "chunks", "uploaded_at")
    # Only businesses with a visible document: the list's own queryset is already limited by access.
    list_filter = ("status", "format", "skip_reason", ("business", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "path")
    list_select_related = ("business",)
    ordering = ("business", "path")
    actions = ["run_whole_pipeline"]

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj: Document) -> str:
        size = float(obj.size_bytes)
        for unit in ("B", "KB", "MB"):
            if size < 1024 or unit == "MB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            size /= 1024
        return ""

    # Every door of this admin asks metrics_app.access: the list, the upload form's choices, each object.
    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        return access.visible_rows(request.user, super().get_queryset(request))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "business":
            kwargs["queryset"] = access.visible_businesses(request.user).order_by("id")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_view_permission(self, request: HttpRequest, obj: Document | None = None) -> bool:
        return super().has_view_permission(request, obj) and _may_see(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Document | None = None) -> bool:
        return super().has_delete_permission(request, obj) and _may_see(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and access.visible_business_ids(request.user) != set()

    def get_form(
        self, request: HttpRequest, obj: Document | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm]:
        if obj is None:
            kwargs["form"] = DocumentUploadForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Document | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("business", "file")
        return (
            "business",
            "path",
            "name",
            "format",
            "size_bytes",
            "sha256",
            "status",
            "skip_reason",
            "skip_detail",
            "chunks",
            "uploaded_by",
            "uploaded_at",
            "processed_at",
        )

    def has_change_permission(self, request: HttpRequest, obj: Document | None = None) -> bool:
        return False  # a document is replaced by deleting and uploading, so DVC sees a new version

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if (
            request.method == "POST"
            and declared > settings.DOCUMENTS_MAX_UPLOAD_MB * 1024 * 1024 + UPLOAD_OVERHEAD_BYTES
        ):
            self.message_user(
                request,
                f"The upload is larger than {settings.DOCUMENTS_MAX_UPLOAD_MB} MB and was refused.",
                messages.ERROR,
            )
            return HttpResponseRedirect(request.path)
        return super().add_view(request, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Document, form: forms.ModelForm, change: bool) -> None:
        business = form.cleaned_data["business"]
        if not access.can_see(request.user, business.pk):
            raise PermissionDenied
        stored = services.store_document(business, form.cleaned_data["file"], request.user)
        obj.pk = stored.pk
        obj.__dict__.update({k: v for k, v in stored.__dict__.items() if not k.startswith("_")})

    def delete_model(self, request: HttpRequest, obj: Document) -> None:
        if not access.can_see(request.user, obj.business_id):
            raise PermissionDenied
        services.delete_document(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        for document in access.visible_rows(request.user, queryset):
            services.delete_document(document)

    def has_run_pipeline_permission(self, request: HttpRequest) -> bool:
        return may_run_pipeline(request)

    @admin.action(description="Run the whole pipeline (all documents)", permissions=["run_pipeline"])
    def run_whole_pipeline(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        _queue(request, PipelineStage.ALL)


def may_run_pipeline(request: HttpRequest) -> bool:
    """A run rebuilds every business's knowledge base: starting or cancelling one needs the permission and
    sight of every business."""
    return request.user.has_perm(RUN_PERMISSION) and access.sees_every_business(request.user)


def _may_see(request: HttpRequest, document: Document | None) -> bool:
    return document is None or access.can_see(request.user, document.business_id)


def _queue(request: HttpRequest, stage: str) -> PipelineRun | None:
    try:
        run = services.request_run(stage, request.user)
    except services.RunRefused as exc:
        messages.error(request, f"Not started: {exc}")
        return None
    messages.success(request, f"{run} is queued; the worker starts it shortly. This page shows its progress.")
    return run


@admin.register(PipelineRun)
class PipelineRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "stage",
        "status",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "kb_version",
    )
    list_filter = ("status", "stage")
    list_select_related = ("requested_by",)
    ordering = ("-created_at",)
    change_list_template = "admin/documents_app/pipelinerun/change_list.html"
    readonly_fields = (
        "stage",
        "status",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
        "duration_seconds",
        "kb_version",
        "command",
        "exit_code",
        "error",
        "params_pretty",
        "metrics_pretty",
        "log_pretty",
    )
    fields = readonly_fields
    actions = ["cancel_queued_runs"]

    def has_run_pipeline_permission(self, request: HttpRequest) -> bool:
        return may_run_pipeline(request)

    @admin.action(description="Cancel the selected runs that have not started", permissions=["run_pipeline"])
    def cancel_queued_runs(self, request: HttpRequest, queryset: QuerySet[PipelineRun]) -> None:
        cancelled = services.cancel_queued_runs(queryset)
        self.message_user(request, f"{cancelled} queued run(s) cancelled; running ones go on to their end.")

    @admin.display(description="duration", ordering="duration_seconds")
    def duration(self, obj: PipelineRun) -> str:
        return "" if obj.duration_seconds is None else f"{obj.duration_seconds:.1f} s"

    @admin.display(description="parameters")
    def params_pretty(self, obj: PipelineRun) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.params, indent=2, sort_keys=True))

    @admin.display(description="metrics")
    def metrics_pretty(self, obj: PipelineRun) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.metrics, indent=2, sort_keys=True))

    @admin.display(description="log")
    def log_pretty(self, obj: PipelineRun) -> str:
        return format_html('<pre style="max-height: 40em; overflow: auto">{}</pre>', obj.log or "(no output yet)")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PipelineRun | None = None) -> bool:
        return False

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The run list is not split by business, so a lookup on the log or the metrics in the URL
        # (?log__contains=...) would answer limited staff yes or no about other businesses' files.
        if request is None:
            return super().lookup_allowed(lookup, value)  # type: ignore[call-arg]  # Django 5.2 still allows no request; the stubs do not
        if not access.sees_every_business(request.user):
            return lookup.split("__", 1)[0] in self.list_filter and super().lookup_allowed(lookup, value, request)
        return super().lookup_allowed(lookup, value, request)

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> PipelineRun | None:
        """The run as this user may see it: a run covers every business, so limited staff get their part only."""
        run = super().get_object(request, object_id, from_field)
        visible = access.visible_business_ids(request.user)
        if run is None or visible is None:
            return run
        by_business = (run.metrics or {}).get("by_business", {})
        run.metrics = {"by_business": {b: part for b, part in sorted(by_business.items()) if b in visible}}
        run.log = (
            "The log covers every business's documents, so it is shown only to staff who see every business. "
            "The metrics above are this run's figures for your businesses."
        )
        return run

    def get_urls(self) -> list[URLPattern]:
        return [
            path("run/", self.admin_site.admin_view(self.run_view), name="documents_app_pipelinerun_run"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_run_pipeline": may_run_pipeline(request)}
        return super().changelist_view(request, extra_context)

    def run_view(self, request: HttpRequest) -> HttpResponse:
        """Choose a stage and queue it; POST only queues, the worker runs it."""
        return _run_view(self, request)


def _run_view(model_admin: PipelineRunAdmin, request: HttpRequest) -> HttpResponse:
    if not may_run_pipeline(request):
        raise PermissionDenied
    if request.method not in ("GET", "HEAD", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    if request.method == "POST":
        stage = request.POST.get("stage", "")
        if stage not in PipelineStage.values:
            messages.error(request, "Choose a stage to run.")
            return HttpResponseRedirect(request.path)
        run = _queue(request, stage)
        target = (
            reverse("admin:documents_app_pipelinerun_change", args=[run.pk])
            if run
            else reverse("admin:documents_app_pipelinerun_changelist")
        )
        return HttpResponseRedirect(target)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Run the document pipeline",
        "opts": model_admin.model._meta,
        "stages": PipelineStage.choices,
        "active_run": PipelineRun.objects.filter(active=True).first(),
        "businesses": access.visible_businesses(request.user).filter(documents__isnull=False).distinct().count(),
        "documents": access.visible_rows(request.user, Document.objects.all()).count(),
    }
    return TemplateResponse(request, "admin/documents_app/pipelinerun/run.html", context)
