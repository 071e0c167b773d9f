"""Writes of the documents app: uploads, deletions, and pipeline runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import get_valid_filename

from documents_app import tracking
from documents_app.models import Document, DocumentStatus, PipelineRun, PipelineStage, RunStatus
from documents_app.pipeline import stages as pipeline
from documents_app.pipeline.readers import READERS, format_of
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


def _group_alive(group: int) -> bool:
    """Whether a process of process group `group` is still running (a zombie has stopped: it only awaits reaping)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (command) state ppid pgrp ...": the command may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while we looked
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            return True
    return False


def _stop_process_group(process: subprocess.Popen[str], grace_seconds: float = 5) -> None:
    """End the run's whole process tree (dvc, its shell, the stage) and return only once none of it runs.

    dvc runs in a process group of its own (see execute_run), so the stage it
    starts is reached even after dvc itself has gone: killing dvc alone left
    the stage writing outputs after its run had been marked failed.
    """
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        process.wait()
        return
    group = process.pid  # a session leader's pid is its group id
    for signum, wait_seconds in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            break
        if _wait_until_group_ended(process, group, wait_seconds):
            break
    process.wait()


def _wait_until_group_ended(process: subprocess.Popen[str], group: int, seconds: float) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        process.poll()  # reap dvc, so that it does not count as alive
        if not _group_alive(group):
            return True
        time.sleep(0.05)
    return False


def _own_process_group() -> dict[str, Any]:
    if sys.platform == "win32":  # os.name == "nt" in the form mypy reads as a platform check
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a run goes on, SIGTERM to the worker (django-q2 ending a task) unwinds it, so its tree is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rest_of_output(process: subprocess.Popen[str]) -> str:
    """What a stopped run wrote to its log (once its tree has ended, the pipe is closed)."""
    try:
        output, _ = process.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return ""
    return output or ""


def execute_run(run_id: int) -> PipelineRun | None:
    """Run a queued pipeline run to its end and record the outcome. Called by the worker process.

    Returns None when the run was not queued (already taken by another worker, or done).
    A run stopped on timeout, or by the worker being stopped, is marked failed
    only once its whole process tree has ended, so nothing of it writes later.
    """
    claimed = PipelineRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        return None
    run = PipelineRun.objects.get(pk=run_id)
    workdir = root()
    command = _repro_command(run.stage)
    started = time.perf_counter()
    outcome = _run_dvc(run_id, command, workdir, settings.DOCUMENTS_RUN_TIMEOUT_SECONDS)
    duration = time.perf_counter() - started
    succeeded = outcome.exit_code == 0
    results = _run_results(workdir)
    if succeeded:
        sync_documents(results.documents)
    output = outcome.output
    if len(output) > MAX_LOG_CHARS:
        output = "[… start of the log cut …]\n" + output[-MAX_LOG_CHARS:]
    PipelineRun.objects.filter(pk=run_id).update(
        status=RunStatus.SUCCEEDED if succeeded else RunStatus.FAILED,
        active=False,
        finished_at=timezone.now(),
        duration_seconds=round(duration, 3),
        command=" ".join(["dvc", *command[3:]])[:200],
        exit_code=outcome.exit_code,
        log=output,
        params=results.params,
        metrics=results.metrics,
        kb_version=results.kb_version if succeeded else "",
        error=outcome.error[:500],
    )
    run = PipelineRun.objects.get(pk=run_id)
    note = tracking.log_pipeline_run(run, workdir)
    if note:
        run.log = f"{run.log.rstrip()}\n{note}\n"
        run.save(update_fields=["log"])
    return run


class _DvcOutcome(NamedTuple):
    exit_code: int  # -1 when dvc could not start or was stopped
    output: str
    error: str  # "" on success


def _run_dvc(run_id: int, command: list[str], workdir: Path, timeout: int) -> _DvcOutcome:
    """`dvc repro` in its own process group, stopped with its whole tree on timeout or when the worker stops."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # The stages end the run's tree themselves if this worker dies without stopping it (SIGKILL).
        pipeline.RUN_DEADLINE_ENV: str(time.time() + timeout),
        pipeline.RUN_WORKER_ENV: str(os.getpid()),
    }
    try:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            **_own_process_group(),
        )
    except OSError as exc:
        return _DvcOutcome(-1, "", f"could not start dvc: {exc}")
    try:
        with _sigterm_raises():
            output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_process_group(process)
        return _DvcOutcome(-1, _rest_of_output(process), f"stopped after {timeout} s")
    except BaseException:
        # The worker is being stopped (SIGTERM, django-q2's own timeout): take the tree down with it.
        _stop_process_group(process)
        PipelineRun.objects.filter(pk=run_id, active=True).update(
            status=RunStatus.FAILED,
            active=False,
            finished_at=timezone.now(),
            exit_code=-1,
            log=_rest_of_output(process)[-MAX_LOG_CHARS:],
            error="the worker stopped during the run",
        )
        raise
    exit_code = process.returncode
    return _DvcOutcome(exit_code, output, f"dvc repro exited with {exit_code}; see the log" if exit_code else "")


class _RunResults(NamedTuple):
    params: dict[str, Any]
    metrics: dict[str, Any]
    kb_version: str
    documents: list[dict[str, Any]]  # the processing report's entries, read once for the metrics and the sync


def _run_results(workdir: Path) -> _RunResults:
    """What the run's files say: the parameters it ran with, each stage's metrics, the knowledge base version."""
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
    documents = processed_documents(workdir / pipeline.EMBEDDINGS_PATH)
    metrics["by_business"] = business_report(documents)
    kb_version = str(_read_json(workdir / pipeline.KB_PATH).get("version", ""))[:100]
    return _RunResults(params, metrics, kb_version, documents)


def processed_documents(embeddings_path: Path) -> list[dict[str, Any]]:
    """The entries of the last processing report (one per document file), or none when there is no report."""
    documents = _read_json(embeddings_path).get("documents", [])
    return documents if isinstance(documents, list) else []


def business_report(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the last processing run did, per business: what staff limited to some businesses are shown of a run."""
    report: dict[str, dict[str, Any]] = {}
    for entry in documents:
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


def sync_documents(report: list[dict[str, Any]]) -> int:
    """Mirror the processing report's entries into Document rows: files found on disk are listed, vanished ones
    dropped."""
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
