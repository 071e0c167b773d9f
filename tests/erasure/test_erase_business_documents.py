"""Erasing a business with documents: its files, knowledge-base entries and DVC objects go, with a real DVC run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from documents_app.models import Document, PipelineRun, RunStatus
from metrics_app.erasure import services as erasure
from metrics_app.models import Business, ErasureRecord
from tests.documents.helpers import dvc, fresh_clone, run

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

VICTIM = "heron-clinic"
SECRET = "The heron clinic keeps its spare key under the blue stone."
SAMPLE = "techconsult-pro"


def _stored_files(root: Path) -> list[Path]:
    return [path for folder in (root / ".dvc/cache", root / "dvc-remote") for path in folder.rglob("*")
            if path.is_file()]


def _json(root: Path, relative: str) -> dict:
    return json.loads((root / relative).read_text())


@pytest.fixture
def clone_with_victim(tmp_path: Path, settings) -> Path:
    """A clone whose committed pipeline holds the sample business and one more, pushed to its remote."""
    root = fresh_clone(tmp_path / "clone")
    dvc(root, "repro", "--pull")
    folder = root / "data/raw/business_documents" / VICTIM
    folder.mkdir()
    (folder / "policies.md").write_text(f"# Policies\n\n## Keys\n\n{SECRET} " + "We open at nine. " * 10 + "\n")
    # The same content as one of the sample's documents: its object must outlive the erasure.
    shutil.copy(root / "data/raw/business_documents" / SAMPLE / "faq.md", folder / "faq.md")
    dvc(root, "add", "data/raw/business_documents")
    dvc(root, "repro")
    dvc(root, "push")
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost", "commit", "-q", "-m", "heron"], root)
    assert any(SECRET.encode() in path.read_bytes() for path in _stored_files(root))
    settings.DOCUMENTS_PIPELINE_ROOT = root
    business = Business.objects.create(id=VICTIM)
    Business.objects.create(id=SAMPLE)
    for name in ("policies.md", "faq.md"):
        Document.objects.create(business=business, path=f"{VICTIM}/{name}", name=name, format="md", size_bytes=1)
    return root


def test_erasing_a_business_removes_its_documents_from_the_knowledge_base_the_cache_and_the_remote(
    clone_with_victim: Path, superuser
):
    root = clone_with_victim
    sample_version = _json(root, "metrics/knowledge_base_update.json")["business_versions"][SAMPLE]
    sample_faq = subprocess.run(["md5sum", str(root / "data/raw/business_documents" / SAMPLE / "faq.md")],
                                capture_output=True, text=True, check=True).stdout.split()[0]

    preview = erasure.erase_business(superuser, VICTIM, dry_run=True).counts
    done = erasure.erase_business(superuser, VICTIM, reason="closed")

    assert not (root / "data/raw/business_documents" / VICTIM).exists()
    kb = _json(root, "data/knowledge_base/current_kb.json")
    assert set(kb["businesses"]) == {SAMPLE} and {c["business_id"] for c in kb["chunks"]} == {SAMPLE}
    assert VICTIM not in json.dumps(_json(root, "data/processed/document_embeddings.json"))
    assert _json(root, "metrics/knowledge_base_update.json")["business_versions"] == {SAMPLE: sample_version}
    # Nothing of it in the local cache, the remote or the reading cache; the shared content stays.
    assert not any(SECRET.encode() in path.read_bytes() for path in _stored_files(root))
    assert not any(VICTIM.encode() in path.read_bytes() for path in _stored_files(root))
    assert not any(SECRET in path.read_text() for path in (root / "data/cache").rglob("*.json"))
    for store in (root / ".dvc/cache/files/md5", root / "dvc-remote/files/md5"):
        assert (store / sample_faq[:2] / sample_faq[2:]).exists()
    assert "Data and pipelines are up to date" in dvc(root, "status").stdout
    assert "Cache and remote 'repo-remote' are in sync" in dvc(root, "status", "--cloud").stdout
    record = ErasureRecord.objects.get()
    assert record.erased["documents"] == 2 and record.erased["document_files"] == 2
    assert record.erased["dvc_objects_removed_local"] > 0 and record.erased["dvc_objects_removed_remote"] > 0
    assert done.counts == record.erased
    assert (preview["documents"], preview["document_files"]) == (2, 2) and preview["knowledge_base_chunks"] > 0
    assert preview["dvc_objects"] >= max(record.erased["dvc_objects_removed_local"],
                                         record.erased["dvc_objects_removed_remote"])
    assert PipelineRun.objects.get().status == RunStatus.SUCCEEDED
    # The commit made before the erasure names objects that are gone: its documents cannot be fetched again.
    run(["git", "checkout", "-q", "HEAD", "--", "dvc.lock", "data/raw/business_documents.dvc"], root)
    shutil.rmtree(root / ".dvc/cache")
    pulled = dvc(root, "pull", check=False)
    assert pulled.returncode != 0
    assert not (root / "data/raw/business_documents" / VICTIM / "policies.md").exists()


def test_an_erasure_stopped_by_a_failing_dvc_step_keeps_its_record_and_erasing_again_finishes(
    clone_with_victim: Path, superuser
):
    root = clone_with_victim
    config = root / ".dvc/config"
    working = config.read_text()
    (root / "not-a-folder").write_text("")
    config.write_text(working.replace("../dvc-remote", "../not-a-folder/remote"))  # the push cannot write

    with pytest.raises(erasure.ErasureIncomplete, match="dvc push failed"):
        erasure.erase_business(superuser, VICTIM)
    assert not Business.objects.filter(pk=VICTIM).exists() and not Document.objects.filter(business_id=VICTIM)
    assert ErasureRecord.objects.get().erased["events"] == 0
    assert PipelineRun.objects.get().status == RunStatus.FAILED
    assert any(SECRET.encode() in path.read_bytes() for path in _stored_files(root))

    config.write_text(working)
    left = erasure.erase_business(superuser, VICTIM, dry_run=True).counts
    assert left["dvc_objects"] > 0 and left["document_files"] == 0
    done = erasure.erase_business(superuser, VICTIM)
    assert done.counts["dvc_objects_removed_local"] > 0 and done.counts["dvc_objects_removed_remote"] > 0
    assert not any(VICTIM.encode() in path.read_bytes() for path in _stored_files(root))
    assert "Cache and remote 'repo-remote' are in sync" in dvc(root, "status", "--cloud").stdout
    assert ErasureRecord.objects.count() == 2
    with pytest.raises(erasure.ErasureRefused, match="No such business"):
        erasure.erase_business(superuser, VICTIM)
