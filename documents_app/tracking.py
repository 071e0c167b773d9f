"""Each pipeline run as an MLflow run, when MLFLOW_TRACKING_URI is set.

The run holds the parameters of `params.yaml` (flattened: `update_knowledge_base.similarity_threshold`), the
numeric figures of `metrics/*.json` and of what the run measured (`metrics/last_run/`), the knowledge-base
manifest (each business's version, documents, chunk count and topics; not the embeddings) and `dvc.lock` as
artifacts, and as tags its status, the build's `kb_version`, each business's version (`kb_version/<business>`),
the git commit of the pipeline root and the hash of `dvc.lock`. Logging never fails a run: a server that is down
or refuses is one line in the run's log and a warning in the worker's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings

from documents_app.models import PipelineRun, RunStatus
from documents_app.pipeline import stages as pipeline
from metrics_app.tracking import client as mlflow_client

logger = logging.getLogger(__name__)

MANIFEST_ARTIFACT = "knowledge_base_manifest.json"
LOCK_ARTIFACT = "dvc.lock"
# MLflow takes at most 100 params or tags and 1000 metrics in one request.
BATCH = 100
# Letters, digits and `_ - . / space` are what MLflow allows in a key; a business id may also hold `:` and `@`.
_NOT_IN_KEY = re.compile(r"[^\w\-./ ]")
MAX_PARAM_VALUE = 6000


def _key(name: str) -> str:
    return _NOT_IN_KEY.sub("_", name)[:250]


def _flat(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts as (`a.b.c`, leaf) pairs."""
    if isinstance(data, dict):
        for name, value in data.items():
            yield from _flat(value, f"{prefix}{name}.")
    elif prefix:
        yield prefix[:-1], data


def run_params(params: dict[str, Any]) -> dict[str, str]:
    """params.yaml flattened, each value as text (a list as JSON)."""
    return {
        _key(name): (json.dumps(value) if isinstance(value, list | dict) else str(value))[:MAX_PARAM_VALUE]
        for name, value in _flat(params)
    }


def run_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The stages' numeric figures (`process_documents.chunks`, `update_knowledge_base.update_time_seconds`...)."""
    return {
        _key(name): float(value)
        for stage in ("process_documents", "update_knowledge_base")
        for name, value in _flat(metrics.get(stage, {}), f"{stage}.")
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def manifest(knowledge_base: dict[str, Any]) -> dict[str, Any]:
    """What the knowledge base holds, without its chunks: the versions, the method, the parameters, per business."""
    return {name: knowledge_base[name] for name in ("version", "embedding", "params", "businesses")
            if name in knowledge_base}


def git_commit(workdir: Path) -> str:
    """The commit checked out in the pipeline root, "" when it is no git work tree (or git is missing)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _millis(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment else None


def _tags(run: PipelineRun, knowledge_base: dict[str, Any], workdir: Path, lock: bytes) -> dict[str, str]:
    tags = {
        "status": run.status,
        "stage": run.stage,
        "pipeline_run_id": str(run.pk),
        "kb_version": run.kb_version or str(knowledge_base.get("version", "")),
        "dvc_lock_sha256": hashlib.sha256(lock).hexdigest() if lock else "",
        "mlflow.runName": f"pipeline run {run.pk}",
    }
    if run.error:
        tags["error"] = run.error
    commit = git_commit(workdir)
    if commit:
        tags["mlflow.source.git.commit"] = commit  # the MLflow UI shows it as the run's source version
        tags["git_commit"] = commit
    for business, held in knowledge_base.get("businesses", {}).items():
        if isinstance(held, dict) and held.get("version"):
            tags[_key(f"kb_version/{business}")] = str(held["version"])
    return {name: value for name, value in tags.items() if value}


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _log(run: PipelineRun, workdir: Path) -> str:
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow_client.tracking_client()
    experiment = mlflow_client.experiment_id(client, settings.MLFLOW_PIPELINE_EXPERIMENT)
    # After a failed run the file is the last good build's: its manifest says what the service still serves.
    knowledge_base = _read_json(workdir / pipeline.KB_PATH)
    lock_path = workdir / "dvc.lock"
    lock = lock_path.read_bytes() if lock_path.is_file() else b""
    created = client.create_run(experiment, start_time=_millis(run.started_at or run.created_at))
    run_id = created.info.run_id
    stamp = _millis(run.finished_at) or created.info.start_time
    tags = [RunTag(name, value[:5000]) for name, value in _tags(run, knowledge_base, workdir, lock).items()]
    params = [Param(name, value) for name, value in run_params(run.params).items()]
    metrics = [Metric(name, value, stamp, 0) for name, value in run_metrics(run.metrics).items()]
    for part in _chunks(tags, BATCH):
        client.log_batch(run_id, tags=part)
    for part in _chunks(params, BATCH):
        client.log_batch(run_id, params=part)
    for part in _chunks(metrics, 1000):
        client.log_batch(run_id, metrics=part)
    if knowledge_base:
        client.log_dict(run_id, manifest(knowledge_base), MANIFEST_ARTIFACT)
    if lock:
        client.log_text(run_id, lock.decode("utf-8", errors="replace"), LOCK_ARTIFACT)
    status = "FINISHED" if run.status == RunStatus.SUCCEEDED else "FAILED"
    client.set_terminated(run_id, status, end_time=stamp)
    return run_id


def log_pipeline_run(run: PipelineRun, workdir: Path) -> str:
    """Log a finished run to MLflow; a line for the run's log ("" when MLflow is not configured). Never raises."""
    if not mlflow_client.configured():
        return ""
    try:
        run_id = _log(run, workdir)
    except Exception as exc:  # the server down, refusing, or no client installed: the run itself stands
        reason = mlflow_client.describe_failure(exc)
        logger.warning("pipeline run %s was not logged to MLflow at %s: %s", run.pk, settings.MLFLOW_TRACKING_URI,
                       reason)
        return f"MLflow: not logged to {settings.MLFLOW_TRACKING_URI} ({reason})"
    return (f"MLflow: logged as run {run_id} of experiment {settings.MLFLOW_PIPELINE_EXPERIMENT!r} "
            f"at {settings.MLFLOW_TRACKING_URI}")
