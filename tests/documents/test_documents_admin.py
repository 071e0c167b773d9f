"""Documents and pipeline runs in the Django admin: upload, delete, list, and who may start a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError, transaction
from django.test import Client

from documents_app.models import Document, DocumentStatus, PipelineRun, RunStatus
from documents_app.services import safe_document_name
from metrics_app.models import Business
from tests.documents.helpers import make_docx
from tests.helpers import staff_user

ADD_URL = "/admin/documents_app/document/add/"
pytestmark = pytest.mark.django_db

RUN_URL = "/admin/documents_app/pipelinerun/run/"
TEXT = b"Opening Hours\nWe open at nine and close at six on weekdays, and at noon on Saturdays.\n"


@pytest.fixture
def root(settings, tmp_path: Path) -> Path:
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def clinic(db) -> Business:
    return Business.objects.create(id="city-clinic", name="City Clinic")


def _staff(username: str, *permissions: str) -> Client:
    user = staff_user(username)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


def _upload(client: Client, business: Business, name: str, content: bytes):
    return client.post(ADD_URL, {"business": business.pk, "file": SimpleUploadedFile(name, content)})


def test_a_staff_member_uploads_a_document_into_its_business_folder(
    root: Path, clinic: Business, tmp_path: Path
) -> None:
    client = _staff("editor", "add_document", "view_document")
    data = make_docx(tmp_path / "made.docx", [("Prices", "A check-up costs $80.")]).read_bytes()
    response = _upload(client, clinic, "Price List.docx", data)
    assert response.status_code == 302
    document = Document.objects.get()
    assert (document.path, document.format, document.status) == (
        "city-clinic/Price_List.docx",
        "docx",
        DocumentStatus.NEW,
    )
    assert (root / "data/raw/business_documents/city-clinic/Price_List.docx").read_bytes() == data
    assert document.size_bytes == len(data)


def test_file_names_cannot_leave_the_business_folder() -> None:
    assert safe_document_name("../../etc/passwd.txt") == "passwd.txt"
    assert safe_document_name("..\\..\\boot.ini.MD") == "boot.ini.md"
    assert safe_document_name(".hidden.pdf") == "hidden.pdf"
    assert safe_document_name("résumé (final)!.docx") == "résumé_final.docx"
    assert (
        safe_document_name("a" * 500 + ".txt").endswith(".txt") and len(safe_document_name("a" * 500 + ".txt")) <= 120
    )


def test_an_upload_over_the_size_limit_is_refused_and_nothing_is_written(
    root: Path, clinic: Business, settings
) -> None:
    settings.DOCUMENTS_MAX_UPLOAD_MB = 1
    client = _staff("editor", "add_document")
    # Far over the limit: refused from its Content-Length, before the body is read.
    refused = client.post(
        ADD_URL, {"business": clinic.pk, "file": SimpleUploadedFile("big.txt", TEXT * 20_000)}, follow=True
    )
    assert "larger than 1 MB and was refused" in refused.content.decode()
    # Just over the limit (within the multipart allowance): refused by the form, with the reason beside the field.
    just_over = _upload(client, clinic, "big.txt", b"x" * (1024 * 1024 + 10))
    assert just_over.status_code == 200 and "larger than 1 MB" in just_over.content.decode()
    assert not Document.objects.exists()
    assert not (root / "data/raw/business_documents/city-clinic/big.txt").exists()


def test_unsupported_formats_and_duplicate_names_are_refused_with_a_reason(root: Path, clinic: Business) -> None:
    client = _staff("editor", "add_document")
    refused = _upload(client, clinic, "tool.exe", b"MZ\x90\x00")
    assert refused.status_code == 200 and "can be uploaded" in refused.content.decode()
    assert _upload(client, clinic, "hours.txt", TEXT).status_code == 302
    again = _upload(client, clinic, "hours.txt", TEXT)
    assert again.status_code == 200 and "already exists" in again.content.decode()
    assert Document.objects.count() == 1


def test_deleting_a_document_removes_its_file(root: Path, clinic: Business) -> None:
    client = _staff("editor", "add_document", "delete_document", "view_document")
    _upload(client, clinic, "hours.txt", TEXT)
    document = Document.objects.get()
    stored = root / "data/raw/business_documents" / document.path
    assert stored.exists()
    response = client.post(f"/admin/documents_app/document/{document.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not stored.exists() and not Document.objects.exists()


def test_the_document_list_shows_size_format_status_and_the_skip_reason(root: Path, clinic: Business) -> None:
    Document.objects.create(
        business=clinic,
        path="city-clinic/locked.pdf",
        name="locked.pdf",
        format="pdf",
        size_bytes=2048,
        status=DocumentStatus.SKIPPED,
        skip_reason="encrypted",
    )
    viewer = _staff("viewer", "view_document")
    page = viewer.get("/admin/documents_app/document/").content.decode()
    for expected in ("locked.pdf", "2.0 KB", "pdf", "skipped", "encrypted"):
        assert expected in page
    document = Document.objects.get()
    detail = viewer.get(f"/admin/documents_app/document/{document.pk}/change/")
    assert detail.status_code == 200 and "city-clinic/locked.pdf" in detail.content.decode()


def test_staff_without_the_run_permission_cannot_start_a_run(root: Path, clinic: Business) -> None:
    client = _staff("viewer", "view_pipelinerun", "view_document")
    assert client.get(RUN_URL).status_code == 403
    assert client.post(RUN_URL, {"stage": "all"}).status_code == 403
    assert "Run the pipeline" not in client.get("/admin/documents_app/pipelinerun/").content.decode()
    assert not PipelineRun.objects.exists()


def test_a_run_is_queued_for_the_worker_and_a_second_click_is_refused(root: Path, clinic: Business) -> None:
    client = _staff("operator", "run_pipeline", "view_pipelinerun")
    assert "Run the pipeline" in client.get("/admin/documents_app/pipelinerun/").content.decode()
    first = client.post(RUN_URL, {"stage": "process_documents"})
    run = PipelineRun.objects.get()
    assert first.status_code == 302 and first["Location"].endswith(f"/pipelinerun/{run.pk}/change/")
    assert (run.stage, run.status) == ("process_documents", RunStatus.QUEUED)

    second = client.post(RUN_URL, {"stage": "all"}, follow=True)
    assert PipelineRun.objects.count() == 1
    assert "already queued or running" in second.content.decode()
    assert "still in progress" in client.get(RUN_URL).content.decode()


def test_the_database_itself_refuses_two_active_runs(db) -> None:
    PipelineRun.objects.create(stage="all")
    with pytest.raises(IntegrityError), transaction.atomic():
        PipelineRun.objects.create(stage="process_documents")


def test_a_finished_run_shows_its_status_times_log_parameters_metrics_and_version(root: Path) -> None:
    run = PipelineRun.objects.create(
        stage="all",
        status=RunStatus.SUCCEEDED,
        active=False,
        duration_seconds=4.2,
        kb_version="kb-0123456789ab",
        log="Running stage 'process_documents'",
        params={"process_documents": {"min_text_length": 50}},
        metrics={"process_documents": {"documents_processed": 5}},
    )
    page = (
        _staff("viewer", "view_pipelinerun").get(f"/admin/documents_app/pipelinerun/{run.pk}/change/").content.decode()
    )
    for expected in ("succeeded", "kb-0123456789ab", "Running stage", "min_text_length", "documents_processed", "4.2"):
        assert expected in page


def test_after_a_run_the_list_shows_files_found_on_disk_and_drops_vanished_ones(root: Path, clinic: Business) -> None:
    from documents_app.services import processed_documents, sync_documents

    raw = root / "data/raw/business_documents"
    (raw / "city-clinic").mkdir(parents=True)
    (raw / "city-clinic/hours.txt").write_bytes(TEXT)
    Document.objects.create(business=clinic, path="city-clinic/gone.pdf", name="gone.pdf", format="pdf", size_bytes=1)
    report = root / "emb.json"
    report.write_text(
        json.dumps(
            {
                "documents": [
                    {
                        "business_id": "new-biz",
                        "source": "scan.pdf",
                        "format": "pdf",
                        "size_bytes": 10,
                        "status": "skipped",
                        "reason": "encrypted",
                        "detail": "the PDF needs a password",
                        "chunks": 0,
                    },
                    {
                        "business_id": "city-clinic",
                        "source": "hours.txt",
                        "format": "txt",
                        "size_bytes": len(TEXT),
                        "status": "processed",
                        "reason": "",
                        "detail": "",
                        "chunks": 1,
                    },
                ]
            }
        )
    )
    (raw / "new-biz").mkdir()
    (raw / "new-biz/scan.pdf").write_bytes(b"%PDF-1.7")

    sync_documents(processed_documents(report))

    listed = {d.path: (d.status, d.skip_reason, d.chunks) for d in Document.objects.all()}
    assert listed == {
        "new-biz/scan.pdf": ("skipped", "encrypted", 0),
        "city-clinic/hours.txt": ("processed", "", 1),
    }
    assert Business.objects.filter(pk="new-biz").exists()


def test_a_queued_run_can_be_cancelled_so_that_a_new_one_can_start(root: Path) -> None:
    client = _staff("operator", "run_pipeline", "view_pipelinerun")
    client.post(RUN_URL, {"stage": "all"})
    queued = PipelineRun.objects.get()
    response = client.post(
        "/admin/documents_app/pipelinerun/",
        {"action": "cancel_queued_runs", "_selected_action": [queued.pk]},
    )
    assert response.status_code == 302
    queued.refresh_from_db()
    assert (queued.status, queued.active, queued.error) == (RunStatus.FAILED, False, "cancelled before it started")
    from documents_app.services import execute_run

    assert execute_run(queued.pk) is None  # the worker, picking the task up late, leaves it alone
    client.post(RUN_URL, {"stage": "update_knowledge_base"})
    assert PipelineRun.objects.filter(active=True, stage="update_knowledge_base").count() == 1
