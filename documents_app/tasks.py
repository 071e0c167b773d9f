"""Tasks that the background worker (`python manage.py qcluster`, django-q2) runs."""

from __future__ import annotations

import logging

from django.utils import timezone

from documents_app import services
from documents_app.models import PipelineRun, RunStatus

logger = logging.getLogger(__name__)


def run_pipeline(run_id: int) -> str:
    """Run one queued pipeline run; a crash is recorded on the run rather than left as 'running'."""
    try:
        run = services.execute_run(run_id)
    except Exception as exc:
        logger.exception("pipeline run %s crashed", run_id)
        PipelineRun.objects.filter(pk=run_id, active=True).update(
            status=RunStatus.FAILED, active=False, finished_at=timezone.now(), error=f"crashed: {exc}"[:500]
        )
        raise
    if run is None:
        return f"run {run_id} was not queued; nothing done"
    return f"run {run_id} {run.status}: knowledge base {run.kb_version or '-'}"
