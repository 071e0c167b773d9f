"""A staff member uploads a document, clicks run, and the real worker process builds the new knowledge base."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from documents_app.models import Document, DocumentStatus, PipelineRun, RunStatus
from metrics_app.models import Business
from tests.documents.helpers import make_pdf, tool_env
from tests.helpers import ROOT, database_url_for_subprocess, staff_user, stop_worker

SAMPLE = "techconsult-pro"


def _start_worker(pipeline_root: Path, log: Path) -> subprocess.Popen:
    env = {
        **tool_env(),
        "DJANGO_SETTINGS_MODULE": "mlops_site.settings",
        "DATABASE_URL": database_url_for_subprocess(),
        "DOCUMENTS_PIPELINE_ROOT": str(pipeline_root),
        "MLOPS_ENV": "development",
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_until_finished(run: PipelineRun, worker: subprocess.Popen, log: Path, timeout: float = 180) -> PipelineRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            return run
        assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"run still {run.status} after {timeout} s; worker log:\n{log.read_text()}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_uploaded_document_reaches_the_knowledge_base_through_the_worker(
    built_clone: Path,
    tmp_path: Path,
    settings,
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(built_clone, root, symlinks=True)
    settings.DOCUMENTS_PIPELINE_ROOT = root
    settings.MLOPS_ALLOW_ANONYMOUS_CHAT = True
    api = Client()
    before = api.get("/api/knowledge-base/", {"business_id": SAMPLE}).json()["version"]

    operator = staff_user("operator")
    for codename in ("add_document", "view_document", "run_pipeline", "view_pipelinerun"):
        operator.user_permissions.add(Permission.objects.get(codename=codename))
    admin = Client()
    admin.force_login(operator)
    Business.objects.create(id=SAMPLE)
    leaflet = make_pdf(
        tmp_path / "leaflet.pdf",
        [("Gift Vouchers", "Gift vouchers for a consulting session can be bought at the front desk for any amount.")],
    )
    uploaded = admin.post(
        "/admin/documents_app/document/add/",
        {"business": SAMPLE, "file": SimpleUploadedFile("Gift Leaflet.pdf", leaflet.read_bytes())},
    )
    assert uploaded.status_code == 302

    clicked = admin.post("/admin/documents_app/pipelinerun/run/", {"stage": "all"})
    assert clicked.status_code == 302
    run = PipelineRun.objects.get()
    assert run.status == RunStatus.QUEUED and run.requested_by == operator

    log = tmp_path / "worker.log"
    worker = _start_worker(root, log)
    try:
        run = _wait_until_finished(run, worker, log)
    finally:
        stop_worker(worker)

    assert run.status == RunStatus.SUCCEEDED, f"{run.error}\n{run.log}"
    assert not run.active and run.started_at and run.finished_at and run.duration_seconds > 0
    assert "Running stage 'process_documents'" in run.log
    assert run.kb_version.startswith("kb-") and run.kb_version != before
    assert run.params["update_knowledge_base"]["similarity_threshold"] == 0.85
    processing = run.metrics["process_documents"]
    assert processing["documents_processed"] == 6
    assert processing["documents_parsed"] == 1  # the five sample documents came from the cache
    assert run.metrics["update_knowledge_base"]["version"] == run.kb_version

    document = Document.objects.get(path=f"{SAMPLE}/Gift_Leaflet.pdf")
    assert document.status == DocumentStatus.PROCESSED and document.chunks >= 1

    page = admin.get(f"/admin/documents_app/pipelinerun/{run.pk}/change/").content.decode()
    assert run.kb_version in page and "documents_processed" in page

    summary = api.get("/api/knowledge-base/", {"business_id": SAMPLE}).json()
    assert summary["version"] == run.kb_version
    found = api.get("/api/knowledge-base/search", {"q": "gift voucher", "business_id": SAMPLE}).json()
    assert found["results"][0]["source"] == "Gift_Leaflet.pdf"
