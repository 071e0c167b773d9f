"""Helpers for the client tests: building the TypeScript package, running a chat-app script, restarting the service."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest

from tests.helpers import ROOT, LiveService, stop_service

TS_DIR = ROOT / "clients" / "typescript"
PY_DIR = ROOT / "clients" / "python"

TURNS_PER_CONVERSATION = 5  # the scripted conversation in both chat-app scripts


def have_node() -> bool:
    return bool(shutil.which("node") and shutil.which("npm"))


def run(command: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


@functools.cache
def build_typescript() -> Path:
    # A private copy: runs that share the work tree (SQLite and PostgreSQL side
    # by side, or two developers) must not rebuild each other's node_modules.
    copy = Path(tempfile.mkdtemp(prefix="mlops-ts-client-")) / "typescript"
    shutil.copytree(TS_DIR, copy, ignore=shutil.ignore_patterns("node_modules", "dist", "build-test", "*.tgz"))
    atexit.register(shutil.rmtree, copy.parent, True)
    run(["npm", "ci", "--no-audit", "--no-fund"], copy)
    run(["npm", "run", "pretest"], copy)
    return copy


def restart_on_same_port(service: LiveService, start: Callable[..., LiveService], **options: Any) -> LiveService:
    """Stop a live service and start a new one on the same port and database."""
    port = int(service.url.rsplit(":", 1)[1])
    stop_service(service)
    with mock.patch("tests.pgserver.free_port", return_value=port):
        return start(**options)


def client_env(service: LiveService, raw_key: str, **extra: str) -> dict[str, str]:
    """The environment a deployed chat app has: the service URL and an ingest key, nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DJANGO_", "DATABASE_"))}
    return {**env, "MLOPS_SERVICE_URL": service.url, "MLOPS_API_KEY": raw_key, **extra}


def run_chat_app(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    on_pause: Callable[[str], None] | None = None,
    timeout: float = 180,
) -> dict[str, Any]:
    """Run a chat-app script; at each PAUSED / SENT line call `on_pause`, then let it go on. Its final JSON line."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    last = ""
    try:
        assert process.stdout is not None and process.stdin is not None
        for line in process.stdout:
            line = line.strip()
            if line in ("PAUSED", "SENT"):
                if on_pause:
                    on_pause(line)
                process.stdin.write("go\n")
                process.stdin.flush()
            elif line:
                last = line
        process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
    stderr = process.stderr.read() if process.stderr else ""
    assert process.returncode == 0, f"chat app exited with {process.returncode}:\n{stderr[-4000:]}"
    try:
        return json.loads(last)
    except ValueError:
        pytest.fail(f"chat app printed no summary; last line {last!r}\n{stderr[-4000:]}")
