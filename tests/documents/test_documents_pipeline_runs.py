"""What a pipeline run records: outcome, command, log, parameters, metrics and version, also when it fails."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from documents_app.models import PipelineRun, RunStatus
from documents_app.pipeline import stages as pipeline
from documents_app.services import execute_run, request_run
from tests.documents.helpers import fresh_clone, tool_env
from tests.helpers import ROOT, database_url_for_subprocess, require

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_a_run_on_a_deployment_that_never_pulled_fetches_the_documents_first(tmp_path: Path, settings) -> None:
    root = fresh_clone(tmp_path / "repo")
    assert not (root / "data/raw/business_documents").exists()
    settings.DOCUMENTS_PIPELINE_ROOT = root

    run = execute_run(request_run("all").pk)

    assert run.status == RunStatus.SUCCEEDED, run.log
    assert run.command == "dvc repro --pull"
    assert (root / "data/raw/business_documents/techconsult-pro/faq.md").exists()
    assert run.kb_version.startswith("kb-")
    assert run.metrics["process_documents"]["documents_processed"] == 5


def test_one_stage_runs_alone(built_clone: Path, tmp_path: Path, settings) -> None:
    root = tmp_path / "repo"
    shutil.copytree(built_clone, root, symlinks=True)
    settings.DOCUMENTS_PIPELINE_ROOT = root
    run = execute_run(request_run("update_knowledge_base").pk)
    assert run.status == RunStatus.SUCCEEDED, run.log
    assert run.command == "dvc repro --single-item update_knowledge_base"
    assert "process_documents" not in run.log


def test_a_failed_run_keeps_its_log_and_frees_the_slot(built_clone: Path, tmp_path: Path, settings) -> None:
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


# A stage that outlives any short timeout: it starts a child of its own, notes the processes, then
# writes into the knowledge base late, as a stage still running after its run was stopped would.
SLOW_STAGE = """
import os, subprocess, sys, time
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
Path("stage.pids").write_text(f"{os.getpid()} {child.pid} {os.getpgrp()}")
time.sleep(300)
Path("data/knowledge_base/current_kb.json").write_text("written after the run was stopped")
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _group_members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


# The worker's side of a run, in a process of its own that the test can stop as a service stop would.
WORKER = """
import sys
import django
django.setup()
from documents_app.services import execute_run
execute_run(int(sys.argv[1]))
"""


def _slow_clone(built_clone: Path, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(built_clone, root, symlinks=True)
    (root / "slow_stage.py").write_text(SLOW_STAGE)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())
    stages["stages"]["process_documents"]["cmd"] = "python slow_stage.py"
    (root / "dvc.yaml").write_text(yaml.safe_dump(stages))
    return root


def test_a_run_past_its_timeout_ends_its_whole_process_tree_and_changes_no_output(
    built_clone: Path,
    tmp_path: Path,
    settings,
) -> None:
    require(Path("/proc").is_dir(), "a /proc file system")
    root = _slow_clone(built_clone, tmp_path)
    kb = root / "data/knowledge_base/current_kb.json"
    kb_before = kb.read_bytes()
    settings.DOCUMENTS_PIPELINE_ROOT = root
    settings.DOCUMENTS_RUN_TIMEOUT_SECONDS = 10

    run = execute_run(request_run("all").pk)

    assert run.status == RunStatus.FAILED and run.error == "stopped after 10 s" and not run.active
    stage, child, group = (int(n) for n in (root / "stage.pids").read_text().split())
    assert not _running(stage) and not _running(child)
    assert _group_members(group) == []  # dvc, its shell, the stage and the stage's child: all ended
    assert kb.read_bytes() == kb_before  # nobody is left to write it
    assert request_run("all").status == RunStatus.QUEUED  # the slot is free for the next run


@pytest.mark.django_db(transaction=True)
def test_a_worker_told_to_stop_ends_its_runs_whole_process_tree_first(
    built_clone: Path,
    tmp_path: Path,
) -> None:
    require(Path("/proc").is_dir(), "a /proc file system")
    root = _slow_clone(built_clone, tmp_path)
    kb = root / "data/knowledge_base/current_kb.json"
    kb_before = kb.read_bytes()
    run = request_run("all")
    env = {
        **tool_env(),
        "DJANGO_SETTINGS_MODULE": "mlops_site.settings",
        "DATABASE_URL": database_url_for_subprocess(),
        "DOCUMENTS_PIPELINE_ROOT": str(root),
        "MLOPS_ENV": "development",
        "PYTHONPATH": str(ROOT),
    }
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(run.pk)], cwd=ROOT, env=env)
    try:
        pids = root / "stage.pids"
        deadline = time.monotonic() + 120
        while not (pids.exists() and pids.read_text()):
            assert worker.poll() is None and time.monotonic() < deadline, "the stage never started"
            time.sleep(0.1)
        stage, child, group = (int(n) for n in pids.read_text().split())

        worker.send_signal(signal.SIGTERM)  # django-q2 ending a task, or someone stopping the worker
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert not _running(stage) and not _running(child) and _group_members(group) == []
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and run.error == "the worker stopped during the run" and not run.active
    assert kb.read_bytes() == kb_before


def test_a_stage_past_its_run_deadline_writes_no_output(
    tmp_path: Path,
    monkeypatch,
) -> None:
    (tmp_path / "raw/clinic").mkdir(parents=True)
    (tmp_path / "raw/clinic/hours.txt").write_text("Opening Hours\n" + "We open at nine and close at six. " * 5)
    output = tmp_path / "emb.json"
    output.write_text("the last good output")
    monkeypatch.setenv(pipeline.RUN_DEADLINE_ENV, str(time.time() - 1))

    with pytest.raises(pipeline.PipelineError, match="the run's time is up"):
        pipeline.process_documents(
            tmp_path / "raw", output, tmp_path / "m.json", pipeline.ProcessParams(), tmp_path / "cache"
        )

    assert output.read_text() == "the last good output"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


# A stage of a run whose worker is killed without a chance to stop it: it starts a child, then waits.
ORPHANED_STAGE = """
import os, subprocess, sys, time
from pathlib import Path
from documents_app.pipeline import stages as pipeline
pipeline.watch_run(poll_seconds=0.05)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(child.pid, flush=True)
time.sleep(300)
"""


def test_a_stage_whose_worker_was_killed_ends_its_whole_process_group(tmp_path: Path) -> None:
    require(Path("/proc").is_dir(), "a /proc file system")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    env = {
        **tool_env(),
        "PYTHONPATH": str(ROOT),
        pipeline.RUN_DEADLINE_ENV: str(time.time() + 3600),
        pipeline.RUN_WORKER_ENV: str(worker.pid),
    }
    stage = subprocess.Popen(
        [sys.executable, "-c", ORPHANED_STAGE], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        child = int(stage.stdout.readline())
        assert stage.poll() is None  # the worker is alive: the stage goes on

        worker.kill()
        worker.wait()
        assert stage.wait(timeout=60) == -signal.SIGKILL
        assert not _running(child) and _group_members(stage.pid) == []
    finally:
        for process in (worker, stage):
            if process.poll() is None:
                process.kill()
                process.wait()
