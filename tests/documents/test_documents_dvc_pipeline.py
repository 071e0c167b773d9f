"""`dvc repro` on a fresh clone builds the knowledge base, and reruns exactly what changed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.documents.helpers import dvc

pytestmark = pytest.mark.slow


def _json(root: Path, relative: str) -> dict:
    return json.loads((root / relative).read_text())


def test_a_fresh_clone_builds_the_knowledge_base_with_dvc_repro(built_clone: Path) -> None:
    root = built_clone
    kb = _json(root, "data/knowledge_base/current_kb.json")
    assert kb["version"].startswith("kb-")
    assert kb["params"]["process_documents"]["supported_formats"] == ["pdf", "docx", "txt", "md"]
    assert kb["params"]["update_knowledge_base"] == {"similarity_threshold": 0.85, "max_documents_per_topic": 10}
    assert set(kb["businesses"]) == {"techconsult-pro"}
    assert {c["source"] for c in kb["chunks"]} == {
        "sample_business_info.txt",
        "faq.md",
        "services_and_pricing.docx",
        "policies.pdf",
        "about_our_team.txt",
    }
    embeddings = _json(root, "data/processed/document_embeddings.json")
    assert (
        len(embeddings["chunks"])
        == len(kb["chunks"]) + _json(root, "metrics/knowledge_base_update.json")["duplicates_merged"]
    )

    processing = _json(root, "metrics/document_processing.json")
    assert (processing["documents_seen"], processing["documents_processed"], processing["documents_skipped"]) == (
        5,
        5,
        0,
    )
    assert processing["chunks"] == len(embeddings["chunks"])
    assert _json(root, "metrics/last_run/document_processing.json")["processing_time_seconds"] > 0
    assert _json(root, "metrics/knowledge_base_update.json")["version"] == kb["version"]

    assert "Data and pipelines are up to date" in dvc(root, "status").stdout
    shown = dvc(root, "metrics", "show").stdout
    for name in ("documents_processed", "duplicates_merged", "chunks_dropped_by_topic_cap", "version"):
        assert name in shown
    again = dvc(root, "repro").stdout
    assert "didn't change, skipping" in again and "Running stage" not in again


def test_dvc_reruns_only_the_stages_whose_inputs_changed(built_clone: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(built_clone, root, symlinks=True)
    params_file = root / "params.yaml"

    params = yaml.safe_load(params_file.read_text())
    params["update_knowledge_base"]["similarity_threshold"] = 0.3
    params_file.write_text(yaml.safe_dump(params))
    only_kb = dvc(root, "repro").stdout
    assert "Stage 'process_documents' didn't change" in only_kb
    assert "Running stage 'update_knowledge_base'" in only_kb
    assert _json(root, "metrics/knowledge_base_update.json")["duplicates_merged"] > 0

    faq = root / "data/raw/business_documents/techconsult-pro/faq.md"
    faq.write_text(
        faq.read_text() + "\n## Gift Vouchers\nGift vouchers can be bought at the front desk for any amount.\n"
    )
    one_changed = dvc(root, "repro").stdout
    assert "Running stage 'process_documents'" in one_changed
    measured = _json(root, "metrics/last_run/document_processing.json")
    assert (measured["documents_parsed"], measured["documents_from_cache"]) == (1, 4)
    assert "Data and pipelines are up to date" in dvc(root, "status").stdout

    params["process_documents"]["min_text_length"] = 100_000
    params_file.write_text(yaml.safe_dump(params))
    dvc(root, "repro")
    processing = _json(root, "metrics/document_processing.json")
    assert processing["skipped_by_reason"] == {"too_little_text": 5}
    assert _json(root, "data/knowledge_base/current_kb.json")["chunks"] == []


def test_a_failed_stage_leaves_the_metrics_that_git_tracks_as_they_were(built_clone: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(built_clone, root, symlinks=True)
    before = (root / "metrics/document_processing.json").read_text()
    params_file = root / "params.yaml"
    params_file.write_text(params_file.read_text().replace("min_text_length: 50", "min_text_length: -1"))

    failed = dvc(root, "repro", check=False)
    assert failed.returncode != 0 and "min_text_length must be 0 or more" in failed.stdout + failed.stderr
    assert (root / "metrics/document_processing.json").read_text() == before
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    assert changed.stdout.splitlines() == [" M params.yaml"]
