"""The start-up check that DOCUMENTS_PIPELINE_ROOT holds the pipeline."""

from __future__ import annotations

from pathlib import Path

from documents_app.apps import check_pipeline_root
from tests.helpers import ROOT


def test_the_repository_itself_passes_the_pipeline_root_check(settings) -> None:
    settings.DOCUMENTS_PIPELINE_ROOT = ROOT
    assert check_pipeline_root() == []


def test_a_folder_without_the_pipeline_is_reported_at_start_up(settings, tmp_path: Path) -> None:
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path
    (warning,) = check_pipeline_root()
    assert warning.id == "documents_app.W001"
    assert "dvc.yaml" in warning.msg and str(tmp_path) in warning.msg
