"""What a pipeline run records: outcome, command, log, parameters, metrics and version, also when it fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from documents_app.models import PipelineRun, RunStatus
from documents_app.services import execute_run, request_run
from tests.documents_fixtures import built_clone, fresh_clone  # noqa: F401  (fixture)

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_a_run_on_a_deployment_that_never_pulled_fetches_the_documents_first(tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    root = fresh_clone(tmp_path / "repo")
    assert not (root / "data/raw/business_documents").exists()
    settings.DOCUMENTS_PIPELINE_ROOT = root

    run = execute_run(request_run("all").pk)

    assert run.status == RunStatus.SUCCEEDED, run.log
    assert run.command == "dvc repro --pull"
    assert (root / "data/raw/business_documents/techconsult-pro/faq.md").exists()
    assert run.kb_version.startswith("kb-")
    assert run.metrics["process_documents"]["documents_processed"] == 5


def test_one_stage_runs_alone(built_clone: Path, tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    root = tmp_path / "repo"
    shutil.copytree(built_clone, root, symlinks=True)
    settings.DOCUMENTS_PIPELINE_ROOT = root
    run = execute_run(request_run("update_knowledge_base").pk)
    assert run.status == RunStatus.SUCCEEDED, run.log
    assert run.command == "dvc repro --single-item update_knowledge_base"
    assert "process_documents" not in run.log


def test_a_failed_run_keeps_its_log_and_frees_the_slot(built_clone: Path, tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    root = tmp_path / "repo"
    shutil.copytree(built_clone, root, symlinks=True)
    (root / "params.yaml").write_text("process_documents:\n  min_text_length: -1\n")
    (root / "data/raw/business_documents/techconsult-pro/new.txt").write_text(
        "Services\nA new service for everyone.\n" * 3
    )
    settings.DOCUMENTS_PIPELINE_ROOT = root

    run = execute_run(request_run("all").pk)

    assert run.status == RunStatus.FAILED and run.exit_code != 0
    assert "min_text_length must be 0 or more" in run.log
    assert run.error.startswith("dvc repro exited with") and run.kb_version == ""
    assert not run.active and run.finished_at is not None
    assert request_run("all").status == RunStatus.QUEUED  # the next click is accepted
    assert PipelineRun.objects.count() == 2
