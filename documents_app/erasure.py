"""Erasing a business from the documents app: its documents, its knowledge-base entries and their DVC objects.

Registered as a holding of metrics_app (metrics_app/holdings.py) by the app's
ready(), so erasing a business (metrics_app/erasure) reaches it. Its rows
(the Document rows, its part of the pipeline runs' per-business reports) go
in the erasure's transaction; its files once that has committed, holding the
pipeline's one-run slot so no run reads the folder meanwhile:

1. its folder under `data/raw/business_documents/` is deleted, and the
   stages' reading cache (`data/cache/documents/`, keyed by content hash, so
   it cannot tell whose a reading is) is emptied;
2. `dvc add` records the folder without it and `dvc repro` rebuilds the
   processed chunks and the knowledge base without it; `dvc push` sends the
   new versions to the remote (when one is configured);
3. every DVC object that holds the business is removed from the local cache
   and from the default remote: its files (as listed under its folder by any
   directory manifest there), the manifests listing them, and the pipeline
   outputs (named by `dvc.lock` in any git commit, or in the working copy
   before the erasure) whose chunks or documents are its. An object that
   the new versions still use (a file of the same content elsewhere) stays.

DVC objects are content-addressed and git history cannot be changed here:
the commits of `dvc.lock` and `data/raw/business_documents.dvc` made before
the erasure still name the removed objects, so `dvc checkout` or `dvc pull`
of such a commit fails for them. Old versions of the documents of other
businesses stay; old knowledge bases, which held every business's chunks,
are gone with it. The record's counts say how many objects went
(`dvc_objects_removed_local`, `dvc_objects_removed_remote`). Commit the
changed `dvc.lock`, `data/raw/business_documents.dvc` and the two tracked
metrics files afterwards, as after any pipeline change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from documents_app import services
from documents_app.models import Document, PipelineRun, PipelineStage, RunStatus
from documents_app.pipeline import stages as pipeline
from metrics_app import holdings
from metrics_app.rules import business_id_problem

DVC_FILE = Path(f"{pipeline.RAW_DIR}.dvc")
# The stage outputs that hold chunks or document lists (the metrics are tracked by git, not DVC).
_OUTPUTS = {str(pipeline.EMBEDDINGS_PATH), str(pipeline.KB_PATH)}


class DocumentsErasureFailed(holdings.HoldingFailed):
    """The files could not all be erased; the message says which step failed. Erasing again finishes."""


def _folder(root: Path, business_id: str) -> Path:
    """The business's documents folder; for an id that cannot hold one (such as "../x"), a path that never exists."""
    raw = (root / pipeline.RAW_DIR).resolve()
    folder = (raw / business_id).resolve()
    if business_id_problem(business_id) is not None or folder.parent != raw:
        return raw / ".no-such-business-folder"
    return folder


def _holds(data: Any, business_id: str) -> bool:
    """Whether a pipeline output (embeddings or knowledge base, as JSON) holds anything of the business."""
    if not isinstance(data, dict):
        return False
    if business_id in (data.get("businesses") or {}):
        return True
    entries = [*(data.get("chunks") or []), *(data.get("documents") or [])]
    return any(isinstance(entry, dict) and entry.get("business_id") == business_id for entry in entries)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class DocumentsHolding:
    name = "documents"

    def count(self, business_id: str) -> dict[str, int]:
        root = services.root()
        folder = _folder(root, business_id)
        kb = _read_json(root / pipeline.KB_PATH) or {}
        chunks = kb.get("chunks", []) if isinstance(kb, dict) else []
        counted = {
            "documents": Document.objects.filter(business_id=business_id).count(),
            "document_files": sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0,
            "knowledge_base_chunks": sum(isinstance(c, dict) and c.get("business_id") == business_id
                                         for c in chunks),
        }
        if (root / ".dvc").is_dir():
            try:
                # Objects in the cache or the remote that hold it; those that the rebuilt versions share stay.
                counted["dvc_objects"] = len(_doomed(_Stores(root), business_id, _Earlier.read(root)))
            except Exception:  # an unreachable remote, say: left uncounted; the erasure itself says what failed
                pass
        return counted

    def busy(self, business_id: str) -> str | None:
        active = PipelineRun.objects.filter(active=True).first()
        return None if active is None else f"{active} is queued or running; erase the business once it ends."

    def erase_rows(self, business_id: str) -> dict[str, int]:
        reports = 0
        for run in PipelineRun.objects.filter(metrics__by_business__has_key=business_id).only("pk", "metrics"):
            run.metrics["by_business"].pop(business_id, None)
            run.save(update_fields=["metrics"])
            reports += 1
        documents, _ = Document.objects.filter(business_id=business_id).delete()
        return {"documents": documents, "pipeline_run_reports": reports}

    def erase_files(self, business_id: str) -> dict[str, int]:
        root = services.root()
        folder = _folder(root, business_id)
        counts = {"document_files": 0, "dvc_objects_removed_local": 0, "dvc_objects_removed_remote": 0}
        rebuild = folder.exists() or any(_holds(_read_json(root / path), business_id) for path in _OUTPUTS)
        earlier = _Earlier.read(root) if (root / ".dvc").is_dir() else None
        # Nothing in the working copy, but an earlier erasure may have stopped before removing the objects.
        if not rebuild and (earlier is None or not _doomed(_Stores(root), business_id, earlier)):
            return counts
        try:
            with transaction.atomic():
                run = PipelineRun.objects.create(
                    stage=PipelineStage.ALL, status=RunStatus.RUNNING, started_at=timezone.now(),
                    command="erase a business: dvc add, repro, push; remove its objects",
                )
        except IntegrityError:
            raise DocumentsErasureFailed("Another pipeline run is queued or running; erase the business again "
                                         "once it ends.") from None
        started = time.perf_counter()
        log: list[str] = []
        try:
            if rebuild:
                counts.update(_rebuild_without(run.pk, root, folder, earlier is not None, log))
            if earlier is not None:
                if _has_remote(root):
                    _dvc(run.pk, root, log, "push")  # the new versions, before the old ones go
                counts.update(_remove_objects(root, business_id, earlier))
                log.append(f"removed DVC objects: {counts}")
        except DocumentsErasureFailed as failed:
            _finish(run, started, log, str(failed))
            raise
        except Exception as exc:  # a file that cannot be deleted, DVC's cache or remote failing: said, not a 500
            message = f"{type(exc).__name__}: {exc}"[:300]
            _finish(run, started, log, message)
            raise DocumentsErasureFailed(message) from exc
        _finish(run, started, log, "")
        return counts


def _finish(run: PipelineRun, started: float, log: list[str], error: str) -> None:
    results = services._run_results(services.root())
    PipelineRun.objects.filter(pk=run.pk).update(
        status=RunStatus.FAILED if error else RunStatus.SUCCEEDED, active=False, finished_at=timezone.now(),
        duration_seconds=round(time.perf_counter() - started, 3), exit_code=1 if error else 0,
        log="\n".join(log)[-services.MAX_LOG_CHARS:], params=results.params, metrics=results.metrics,
        kb_version="" if error else results.kb_version, error=error[:500],
    )


def _dvc(run_id: int, root: Path, log: list[str], *args: str) -> None:
    command = [sys.executable, "-m", "dvc", *args]
    outcome = services._run_dvc(run_id, command, root, settings.DOCUMENTS_RUN_TIMEOUT_SECONDS)
    log.append(f"$ dvc {' '.join(args)}\n{outcome.output.rstrip()}")
    if outcome.exit_code != 0:
        raise DocumentsErasureFailed(f"dvc {args[0]} failed ({outcome.error or outcome.exit_code}); see the run's log")


def _rebuild_without(run_id: int, root: Path, folder: Path, versioned: bool, log: list[str]) -> dict[str, int]:
    """Delete the business's folder and the reading cache, then rebuild the pipeline without them."""
    counts = {"document_files": sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0}
    if folder.exists():
        shutil.rmtree(folder)
    shutil.rmtree(root / pipeline.CACHE_DIR, ignore_errors=True)
    log.append(f"deleted {counts['document_files']} document file(s) and the reading cache")
    if not versioned:
        return counts
    _dvc(run_id, root, log, "add", str(pipeline.RAW_DIR))
    _dvc(run_id, root, log, "repro")
    return counts


def _has_remote(root: Path) -> bool:
    found = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=root, capture_output=True,
                           text=True, check=False)
    return bool(found.stdout.strip())


class _Earlier:
    """The texts of `dvc.lock` and the raw folder's .dvc file in every git commit and in the working copy."""

    def __init__(self, locks: list[str], manifests: list[str]) -> None:
        self.locks = locks
        self.manifests = manifests

    @classmethod
    def read(cls, root: Path) -> _Earlier:
        # The working copy's too: its outputs hold the business and may be committed nowhere.
        return cls([_read_text(root / "dvc.lock"), *_git_versions(root, "dvc.lock")],
                   [_read_text(root / DVC_FILE), *_git_versions(root, str(DVC_FILE))])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _git_versions(root: Path, relative: str) -> list[str]:
    """The text of `relative` in every git commit that changed it (none outside a git repository)."""
    found = subprocess.run(["git", "log", "--all", "--format=%H", "--", relative], cwd=root,
                           capture_output=True, text=True, check=False)
    versions = []
    for commit in found.stdout.split():
        shown = subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=root, capture_output=True, text=True,
                               check=False)
        if shown.returncode == 0:
            versions.append(shown.stdout)
    return versions


def _outs(lock_text: str, paths: set[str] | None = None) -> set[str]:
    """The md5s of a dvc.lock's stage outputs (those at `paths`, or all) and dependencies on the raw folder."""
    try:
        lock = yaml.safe_load(lock_text) or {}
    except yaml.YAMLError:
        return set()
    found = set()
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("md5") and (paths is None or out.get("path") in paths):
                found.add(out["md5"])
        for dep in stage.get("deps") or []:
            if paths is None and dep.get("md5"):
                found.add(dep["md5"])
    return found


def _dvc_file_outs(text: str) -> set[str]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return set()
    return {out["md5"] for out in data.get("outs") or [] if out.get("md5")}


class _Stores:
    """The local cache and (when configured) the default remote, with the object ids each holds."""

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        repo = Repo(str(root))
        self.odbs = {"local": repo.cache.local}
        if _has_remote(root):
            self.odbs["remote"] = repo.cloud.get_remote_odb(None, "erase")
        self.stored = {name: set(odb.all()) for name, odb in self.odbs.items()}

    def read(self, oid: str) -> bytes | None:
        for name, odb in self.odbs.items():
            if oid in self.stored[name]:
                return odb.fs.cat_file(odb.oid_to_path(oid))
        return None

    def manifest(self, oid: str) -> list[dict[str, Any]]:
        try:
            entries = json.loads(self.read(oid) or b"[]")
        except ValueError:
            return []
        return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []

    def output_holds(self, oid: str, business_id: str) -> bool:
        try:
            return _holds(json.loads(self.read(oid) or b"null"), business_id)
        except ValueError:
            return False

    def remove(self, oids: set[str]) -> dict[str, int]:
        from dvc_data.hashfile.db import get_index

        counts = {}
        for name, odb in self.odbs.items():
            gone = sorted(oids & self.stored[name])
            for oid in gone:
                odb.fs.remove(odb.oid_to_path(oid))
            if gone and name == "remote":
                get_index(odb).clear()  # DVC's memo of what the remote holds
            counts[f"dvc_objects_removed_{name}"] = len(gone)
        return counts


def _doomed(stores: _Stores, business_id: str, earlier: _Earlier) -> set[str]:
    """The objects that hold the business: its files, the manifests listing them, the outputs with its chunks."""
    prefix = f"{business_id}/"
    doomed: set[str] = set()
    manifests = {oid for oids in stores.stored.values() for oid in oids if oid.endswith(".dir")}
    manifests |= {oid for text in earlier.manifests for oid in _dvc_file_outs(text)}
    for oid in manifests:
        own = {str(entry.get("md5")) for entry in stores.manifest(oid)
               if str(entry.get("relpath", "")).startswith(prefix)}
        if own:
            doomed |= own | {oid}
    outputs = {oid for text in earlier.locks for oid in _outs(text, _OUTPUTS)}
    doomed |= {oid for oid in outputs if stores.output_holds(oid, business_id)}
    stored = set().union(*stores.stored.values())
    return doomed & stored


def _remove_objects(root: Path, business_id: str, earlier: _Earlier) -> dict[str, int]:
    """Remove the objects that hold the business from the local cache and the remote; counts removed."""
    stores = _Stores(root)
    # What the versions made after the erasure use: never removed, whoever else once used it.
    used = _outs(_read_text(root / "dvc.lock")) | _dvc_file_outs(_read_text(root / DVC_FILE))
    for manifest in [oid for oid in used if oid.endswith(".dir")]:
        used |= {str(entry.get("md5")) for entry in stores.manifest(manifest)}
    return stores.remove(_doomed(stores, business_id, earlier) - used)
