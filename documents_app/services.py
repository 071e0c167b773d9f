"""Writes of the documents app: uploads, deletions, and pipeline runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import get_valid_filename

from documents_app import pipeline
from documents_app.models import Document, DocumentStatus, PipelineRun, PipelineStage, RunStatus
from documents_app.readers import READERS, format_of
from metrics_app.models import Business
from metrics_app.rules import business_id_problem

MAX_LOG_CHARS = 200_000
MAX_NAME_CHARS = 120


class DocumentRejected(Exception):
    """An upload that cannot be stored; the message says why, for the person who sent it."""


class RunRefused(Exception):
    """A pipeline run that cannot be queued now (another one is queued or running)."""


def root() -> Path:
    return Path(settings.DOCUMENTS_PIPELINE_ROOT)


def raw_dir() -> Path:
    return root() / pipeline.RAW_DIR


def safe_document_name(original: str) -> str:
    """A file name that cannot leave its folder: no directories, no leading dot, plain characters, bounded."""
    base = original.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, extension = base.rpartition(".")
    if not dot:
        stem, extension = base, ""
    try:
        stem = get_valid_filename(stem).lstrip(".-_")
    except Exception:  # get_valid_filename refuses names that clean to nothing
        stem = ""
    extension = "".join(ch for ch in extension.lower() if ch.isalnum())[:10]
    stem = (stem or "document")[: MAX_NAME_CHARS - len(extension) - 1]
    return f"{stem}.{extension}" if extension else stem


def check_upload(business: Business, upload: UploadedFile) -> str:
    """The safe file name an upload would be stored under; DocumentRejected when it cannot be stored."""
    limit = settings.DOCUMENTS_MAX_UPLOAD_MB * 1024 * 1024
    if upload.size is None or upload.size > limit:
        raise DocumentRejected(f"The file is larger than {settings.DOCUMENTS_MAX_UPLOAD_MB} MB.")
    name = safe_document_name(upload.name or "")
    fmt = format_of(Path(name))
    if fmt not in READERS:
        raise DocumentRejected(f"Only {', '.join(sorted(READERS))} documents can be uploaded, not .{fmt or '(none)'}.")
    problem = business_id_problem(business.pk)
    if problem is not None:
        # A business stored before the rule existed stays readable, but gets no folder of its own.
        raise DocumentRejected(f"This business's id cannot hold documents: a business id {problem}.")
    if Document.objects.filter(path=f"{business.pk}/{name}").exists():
        raise DocumentRejected(f"{name} already exists for this business; delete it first to replace it.")
    return name


def store_document(business: Business, upload: UploadedFile, user: Any = None) -> Document:
    """Save an uploaded file into the business's raw folder and list it; DocumentRejected when it cannot be."""
    name = check_upload(business, upload)
    fmt = format_of(Path(name))
    relative = f"{business.pk}/{name}"
    folder = raw_dir() / business.pk
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    try:
        with open(target, "xb") as handle:  # "x": never overwrite a file that is not listed yet
            for piece in upload.chunks():
                handle.write(piece)
    except FileExistsError:
        raise DocumentRejected(f"{name} already exists in the business folder; delete it first.") from None
    try:
        return Document.objects.create(
            business=business,
            path=relative,
            name=name,
            format=fmt,
            size_bytes=target.stat().st_size,
            uploaded_by=user if getattr(user, "pk", None) else None,
        )
    except IntegrityError:
        target.unlink(missing_ok=True)
        raise DocumentRejected(f"{name} already exists for this business.") from None


def delete_document(document: Document) -> None:
    """Remove the file from the raw folder and its row; the next run drops it from the knowledge base."""
    target = (raw_dir() / document.path).resolve()
    if raw_dir().resolve() in target.parents:
        target.unlink(missing_ok=True)
    document.delete()


def request_run(stage: str, user: Any = None) -> PipelineRun:
    """Queue a pipeline run for the worker; RunRefused while another run is queued or running."""
    if stage not in PipelineStage.values:
        raise RunRefused(f"unknown stage {stage!r}")
    _fail_stale_runs()
    try:
        with transaction.atomic():
            run = PipelineRun.objects.create(stage=stage, requested_by=user if getattr(user, "pk", None) else None)
    except IntegrityError:
        active = PipelineRun.objects.filter(active=True).first()
        raise RunRefused(f"{active or 'another run'} is already queued or running; wait for it to finish.") from None
    from django_q.tasks import async_task

    async_task("documents_app.tasks.run_pipeline", run.pk, task_name=f"pipeline-run-{run.pk}")
    return run


def cancel_queued_runs(runs: QuerySet[PipelineRun]) -> int:
    """Cancel runs the worker has not started (say, while no worker runs); a running one is left to finish."""
    return runs.filter(status=RunStatus.QUEUED).update(
        status=RunStatus.FAILED, active=False, finished_at=timezone.now(), error="cancelled before it started"
    )


def _fail_stale_runs() -> None:
    """A run left active past the worker's timeout died with its worker; free the slot."""
    limit = timezone.now() - timedelta(seconds=settings.DOCUMENTS_RUN_TIMEOUT_SECONDS + 300)
    PipelineRun.objects.filter(active=True, created_at__lt=limit).update(
        active=False, status=RunStatus.FAILED, finished_at=timezone.now(), error="the worker stopped during the run"
    )


def _repro_command(stage: str) -> list[str]:
    command = [sys.executable, "-m", "dvc", "repro"]
    if not raw_dir().exists():
        # A fresh deployment that never pulled: fetch the documents from the DVC remote first.
        command.append("--pull")
    if stage != PipelineStage.ALL:
        command += ["--single-item", stage]
    return command


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def execute_run(run_id: int) -> PipelineRun | None:
    """Run a queued pipeline run to its end and record the outcome. Called by the worker process.

    Returns None when the run was not queued (already taken by another worker, or done).
    """
    claimed = PipelineRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        return None
    run = PipelineRun.objects.get(pk=run_id)
    workdir = root()
    command = _repro_command(run.stage)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=settings.DOCUMENTS_RUN_TIMEOUT_SECONDS,
            check=False,
        )
        exit_code, output, error = completed.returncode, completed.stdout, ""
        if exit_code != 0:
            error = f"dvc repro exited with {exit_code}; see the log"
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else ""
        exit_code, error = -1, f"stopped after {settings.DOCUMENTS_RUN_TIMEOUT_SECONDS} s"
    except OSError as exc:
        exit_code, output, error = -1, "", f"could not start dvc: {exc}"
    duration = time.perf_counter() - started

    try:
        params = yaml.safe_load((workdir / pipeline.PARAMS_PATH).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        params = {}
    metrics = {
        stage: {**_read_json(workdir / path), **_read_json(workdir / pipeline.last_run_path(path))}
        for stage, path in (
            ("process_documents", pipeline.PROCESSING_METRICS_PATH),
            ("update_knowledge_base", pipeline.KB_METRICS_PATH),
        )
    }
    metrics["by_business"] = business_report(workdir / pipeline.EMBEDDINGS_PATH)
    kb_version = str(_read_json(workdir / pipeline.KB_PATH).get("version", ""))[:100]
    if exit_code == 0:
        sync_documents(workdir / pipeline.EMBEDDINGS_PATH)
    if len(output) > MAX_LOG_CHARS:
        output = "[… start of the log cut …]\n" + output[-MAX_LOG_CHARS:]
    PipelineRun.objects.filter(pk=run_id).update(
        status=RunStatus.SUCCEEDED if exit_code == 0 else RunStatus.FAILED,
        active=False,
        finished_at=timezone.now(),
        duration_seconds=round(duration, 3),
        command=" ".join(["dvc", *command[3:]])[:200],
        exit_code=exit_code,
        log=output,
        params=params,
        metrics=metrics,
        kb_version=kb_version if exit_code == 0 else "",
        error=error[:500],
    )
    return PipelineRun.objects.get(pk=run_id)


def business_report(embeddings_path: Path) -> dict[str, dict[str, Any]]:
    """What the last processing run did, per business: what staff limited to some businesses are shown of a run."""
    report: dict[str, dict[str, Any]] = {}
    for entry in _read_json(embeddings_path).get("documents", []):
        business_id = entry.get("business_id")
        if not business_id:
            continue
        part = report.setdefault(
            business_id, {"documents_processed": 0, "documents_skipped": 0, "chunks": 0, "skipped": []}
        )
        if entry.get("status") == "processed":
            part["documents_processed"] += 1
            part["chunks"] += int(entry.get("chunks", 0))
        else:
            part["documents_skipped"] += 1
            part["skipped"].append({"source": entry.get("source", ""), "reason": entry.get("reason", "")})
    return report


def sync_documents(embeddings_path: Path) -> int:
    """Mirror the last processing report into Document rows: files found on disk are listed, vanished ones dropped."""
    report = _read_json(embeddings_path).get("documents", [])
    now = timezone.now()
    count = 0
    for entry in report:
        business_id = entry.get("business_id")
        if not business_id:
            continue
        business, _ = Business.objects.get_or_create(pk=business_id)
        path = f"{business_id}/{entry['source']}"
        Document.objects.update_or_create(
            path=path[:500],
            defaults={
                "business": business,
                "name": entry["source"].rsplit("/", 1)[-1][:255],
                "format": entry.get("format", "")[:16],
                "size_bytes": entry.get("size_bytes", 0),
                "sha256": entry.get("sha256", ""),
                "status": DocumentStatus.PROCESSED if entry["status"] == "processed" else DocumentStatus.SKIPPED,
                "skip_reason": entry.get("reason", "")[:32],
                "skip_detail": entry.get("detail", "")[:500],
                "chunks": entry.get("chunks", 0),
                "processed_at": now,
            },
        )
        count += 1
    # Files removed outside the admin (git, dvc checkout, by hand) leave the list too.
    for document in Document.objects.only("pk", "path"):
        if not (raw_dir() / document.path).exists():
            document.delete()
    return count
