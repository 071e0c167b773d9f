"""A pipeline run as an MLflow run, read back from a real tracking server; a server that is down fails no run."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from documents_app.models import RunStatus
from documents_app.services import execute_run, request_run
from tests.pgserver import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _bm25_copy(built_clone: Path, tmp_path: Path) -> Path:
    """A copy of the built clone on the instant method: a real run that rebuilds the knowledge base."""
    root = tmp_path / "repo"
    shutil.copytree(built_clone, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["process_documents"]["embedding_method"] = "bm25"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _pipeline_runs(client, experiment_name: str) -> list:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no experiment {experiment_name!r}"
    return client.search_runs([experiment.experiment_id])


def test_a_pipeline_run_is_an_mlflow_run_with_its_params_metrics_versions_and_manifest(
    built_clone: Path, tmp_path: Path, settings, mlflow_tracking
) -> None:
    from mlflow.tracking import MlflowClient

    root = _bm25_copy(built_clone, tmp_path)
    settings.DOCUMENTS_PIPELINE_ROOT = root

    run = execute_run(request_run("all").pk)

    assert run.status == RunStatus.SUCCEEDED, run.log
    assert "MLflow: logged as run" in run.log
    client = MlflowClient(mlflow_tracking.url)
    (logged,) = _pipeline_runs(client, settings.MLFLOW_PIPELINE_EXPERIMENT)
    assert logged.info.run_id in run.log and logged.info.status == "FINISHED"
    params, metrics, tags = logged.data.params, logged.data.metrics, logged.data.tags

    assert params["process_documents.embedding_method"] == "bm25"
    assert params["update_knowledge_base.similarity_threshold"] == "0.85"
    assert json.loads(params["process_documents.supported_formats"]) == ["pdf", "docx", "txt", "md"]
    on_disk = json.loads((root / "metrics/document_processing.json").read_text())
    assert metrics["process_documents.documents_processed"] == on_disk["documents_processed"] == 5
    assert metrics["update_knowledge_base.chunks"] == run.metrics["update_knowledge_base"]["chunks"]
    assert metrics["process_documents.processing_time_seconds"] >= 0  # what this run measured (last_run/)

    kb = json.loads((root / "data/knowledge_base/current_kb.json").read_text())
    assert tags["status"] == "succeeded" and tags["stage"] == "all" and tags["pipeline_run_id"] == str(run.pk)
    assert tags["kb_version"] == run.kb_version == kb["version"]
    assert tags["kb_version/techconsult-pro"] == kb["businesses"]["techconsult-pro"]["version"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"] == tags["mlflow.source.git.commit"] == head
    lock = (root / "dvc.lock").read_bytes()
    assert tags["dvc_lock_sha256"] == hashlib.sha256(lock).hexdigest()

    manifest = client.download_artifacts(logged.info.run_id, "knowledge_base_manifest.json", str(tmp_path))
    held = json.loads(Path(manifest).read_text())
    assert held["version"] == kb["version"] and "chunks" not in held
    assert held["businesses"]["techconsult-pro"] == kb["businesses"]["techconsult-pro"]
    assert Path(client.download_artifacts(logged.info.run_id, "dvc.lock", str(tmp_path))).read_bytes() == lock


def test_a_failed_run_is_logged_as_failed_with_its_error(
    built_clone: Path, tmp_path: Path, settings, mlflow_tracking
) -> None:
    from mlflow.tracking import MlflowClient

    root = _bm25_copy(built_clone, tmp_path)
    (root / "params.yaml").write_text("process_documents:\n  min_text_length: -1\n")
    settings.DOCUMENTS_PIPELINE_ROOT = root

    run = execute_run(request_run("all").pk)

    assert run.status == RunStatus.FAILED
    (logged,) = _pipeline_runs(MlflowClient(mlflow_tracking.url), settings.MLFLOW_PIPELINE_EXPERIMENT)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["status"] == "failed" and logged.data.tags["error"].startswith("dvc repro exited with")


def test_with_the_mlflow_server_down_the_run_still_succeeds_and_says_why_it_was_not_logged(
    built_clone: Path, tmp_path: Path, settings, monkeypatch
) -> None:
    from metrics_app.tracking.client import installed
    from tests.helpers import require

    require(installed(), "the MLflow client (pip install -r requirements-mlflow.txt)")
    root = _bm25_copy(built_clone, tmp_path)
    settings.DOCUMENTS_PIPELINE_ROOT = root
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    run = execute_run(request_run("all").pk)

    assert run.status == RunStatus.SUCCEEDED and run.kb_version.startswith("kb-")
    assert f"MLflow: not logged to {settings.MLFLOW_TRACKING_URI}" in run.log


def test_without_mlflow_configured_nothing_is_logged_and_nothing_is_said(tmp_path: Path, settings) -> None:
    from documents_app.tracking import log_pipeline_run

    settings.MLFLOW_TRACKING_URI = ""
    run = request_run("all")
    assert log_pipeline_run(run, tmp_path) == ""
