"""Helpers for the client tests: building the TypeScript package and the Next.js chat app, running them, restarting the service."""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest

from tests.helpers import ROOT, LiveService, stop_process_group, stop_service

TS_DIR = ROOT / "clients" / "typescript"
PY_DIR = ROOT / "clients" / "python"
SHARED_VECTORS = ROOT / "clients" / "variant_assignment_vectors.json"  # A/B arm assignment, checked by both clients
NEXTJS_APP = Path("examples") / "nextjs"  # inside TS_DIR, so that its `file:../..` is the package

# What a copy of TS_DIR leaves out: installs, build output, and the chat route
# and lib/ that the Next.js app's build copies in from fixtures/.
_NOT_SOURCE = shutil.ignore_patterns("node_modules", "dist", "build-test", "*.tgz", ".next", "next-env.d.ts")

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
    shutil.copytree(TS_DIR, copy, ignore=_NOT_SOURCE)
    # Beside the package, as in clients/: its tests read the vectors that both clients share.
    shutil.copy2(SHARED_VECTORS, copy.parent / SHARED_VECTORS.name)
    atexit.register(shutil.rmtree, copy.parent, True)
    run(["npm", "ci", "--no-audit", "--no-fund"], copy)
    run(["npm", "run", "pretest"], copy)
    return copy


# --- The Next.js chat app: clients/typescript/examples/nextjs, the seed's route served by `next start`.

NEXT_ENV = {"NEXT_TELEMETRY_DISABLED": "1"}  # next build and next start would otherwise report usage


def git_files(folder: Path) -> list[str]:
    """A folder's files as git sees them (tracked or new, not ignored: no node_modules), edits included."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "."],
        cwd=folder, capture_output=True, check=True,
    ).stdout
    return sorted(name for name in listed.decode().split("\0") if name and (folder / name).is_file())


def cached_node_build(source: Path, prefix: str, build: Callable[[list[str], Path], None]) -> Path:
    """The folder `build(names, staging)` filled from `source`'s files, made once per digest of them and Node.

    Kept in the temporary directory under a digest of the files and Node's
    version, so the PostgreSQL pass of ./test.sh and later runs reuse what the
    SQLite pass made; any edit makes a new one. Made in a staging folder and
    renamed into place, so a run beside this one sees the whole of it or none
    (when both made it, the first rename wins). Others of `prefix` (and
    unfinished ones) unused for an hour are removed.
    """
    names = git_files(source)
    digest = hashlib.sha256(subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.encode())
    for name in names:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    cache = Path(tempfile.gettempdir())
    made = cache / f"{prefix}-{digest.hexdigest()[:16]}"
    if not made.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}-staging-", dir=cache))
        try:
            build(names, staging)
            staging.rename(made)
        except OSError:
            if not made.is_dir():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    os.utime(made)
    for old in cache.glob(f"{prefix}-*"):
        try:
            stale = old != made and time.time() - old.stat().st_mtime > 3600
        except OSError:
            continue
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    return made


def copy_files(names: list[str], source: Path, target: Path) -> None:
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target / name)


@functools.cache
def build_nextjs_app() -> Path:
    """The Next.js chat app installed from its lock file and built (`next build`, about 40 s on two cores).

    Reused while the package's sources, the app, the route and Node's version stay the same.
    """
    return cached_node_build(TS_DIR, "mlops-nextjs-app", _install_and_build) / "typescript" / NEXTJS_APP


def _install_and_build(names: list[str], staging: Path) -> None:
    package = staging / "typescript"
    copy_files(names, TS_DIR, package)
    env = {**os.environ, **NEXT_ENV}
    run(["npm", "ci", "--no-audit", "--no-fund"], package, env=env)
    run(["npm", "run", "build"], package, env=env)  # dist/, which the app's file:../.. link resolves to
    app = package / NEXTJS_APP
    run(["npm", "ci", "--no-audit", "--no-fund"], app, env=env)
    run(["npm", "run", "build"], app, env=env)
    shutil.rmtree(app / ".next" / "cache", ignore_errors=True)  # the bundler's cache (85 MB); next start needs none


@dataclass
class ChatApp:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None):
        """(status, parsed JSON) for one HTTP request to the app."""
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


def start_nextjs_app(app: Path, env: dict[str, str], tmp_path: Path, timeout: float = 30.0) -> ChatApp:
    """`next start` on 127.0.0.1 and a free port, in a process group of its own; returns once it answers."""
    from tests.pgserver import free_port

    port = free_port()
    log_path = tmp_path / f"next-{port}.log"
    process = subprocess.Popen(
        ["node", "node_modules/next/dist/bin/next", "start", "--hostname", "127.0.0.1", "--port", str(port)],
        cwd=app, env={**env, **NEXT_ENV}, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    chat_app = ChatApp(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"next start exited with {process.returncode}:\n{chat_app.log()}")
        try:
            chat_app.request("GET", "/api/tracking")
            return chat_app
        except OSError:
            time.sleep(0.1)
    stop_nextjs_app(chat_app)
    raise RuntimeError(f"next start did not answer within {timeout} s:\n{chat_app.log()}")


def stop_nextjs_app(chat_app: ChatApp) -> None:
    stop_process_group(chat_app.process, timeout=10)


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
