"""Business documents and the pipeline runs that turn them into the knowledge base.

The files under `data/raw/business_documents/<business id>/` are the source of
truth (DVC versions them); a `Document` row mirrors one file for the admin,
with what the last pipeline run made of it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from metrics_app.models import Business


class DocumentStatus(models.TextChoices):
    NEW = "new", "new (not processed yet)"
    PROCESSED = "processed", "processed"
    SKIPPED = "skipped", "skipped"


class Document(models.Model):
    business = models.ForeignKey(Business, on_delete=models.CASCADE, related_name="documents")
    path = models.CharField(
        max_length=500, unique=True, help_text="Path under data/raw/business_documents/, starting with the business id."
    )
    name = models.CharField(max_length=255)
    format = models.CharField(max_length=16)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=DocumentStatus.choices, default=DocumentStatus.NEW)
    skip_reason = models.CharField(max_length=32, blank=True, help_text="Why the last run left the file out.")
    skip_detail = models.CharField(max_length=500, blank=True)
    chunks = models.PositiveIntegerField(default=0)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    uploaded_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True, help_text="End of the run that last reported on it.")

    class Meta:
        db_table = "documents_document"
        constraints = [
            models.CheckConstraint(condition=Q(size_bytes__gte=0), name="documents_document_size_not_negative"),
        ]
        indexes = [
            # The admin's list of one business's documents, filtered by status.
            models.Index(fields=["business", "status"], name="documents_business_status_idx"),
        ]

    def __str__(self) -> str:
        return self.path


class PipelineStage(models.TextChoices):
    ALL = "all", "whole pipeline"
    PROCESS = "process_documents", "process_documents"
    UPDATE = "update_knowledge_base", "update_knowledge_base"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"


class PipelineRun(models.Model):
    """One run of `dvc repro` (a stage or the whole pipeline) by the background worker."""

    stage = models.CharField(max_length=32, choices=PipelineStage.choices, default=PipelineStage.ALL)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    # True while queued or running; the partial unique constraint below lets only one run be active.
    active = models.BooleanField(default=True, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    command = models.CharField(max_length=200, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    log = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    kb_version = models.CharField(max_length=100, blank=True, verbose_name="knowledge-base version")
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        db_table = "documents_pipeline_run"
        permissions = [("run_pipeline", "Can run the document pipeline")]
        constraints = [
            # One run at a time: a second click while one is queued or running is refused by the database too.
            models.UniqueConstraint(fields=["active"], condition=Q(active=True), name="documents_one_active_run"),
            models.CheckConstraint(
                condition=Q(active=False) | Q(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]),
                name="documents_active_run_is_queued_or_running",
            ),
        ]
        indexes = [
            # The admin's run list, newest first.
            models.Index(fields=["-created_at"], name="documents_run_created_idx"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.get_stage_display()}, {self.status})"
