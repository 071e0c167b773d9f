"""The README's commands, run as written on a `git clone` of the repository.

The clone is of what is committed (as a new user's would be), with its `.venv`
linked to this interpreter's virtual environment instead of a new install.
The commands run with a minimal environment: no `DATABASE_URL` (so the
clone's own new SQLite file), and either no activated environment with a
`python` and `python3` first on PATH that are not the project's, or the
project's environment activated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text(encoding="utf-8")
VENV = Path(sys.prefix)


@dataclass(frozen=True)
class Command:
    line: str  # as the README gives it
    comment: str  # what the README says after `#`, if anything


def readme_commands(section: str) -> list[Command]:
    """The `.venv/bin/...` lines of the README's indented code blocks in one section (## or ###)."""
    match = re.search(rf"^#+ {re.escape(section)}\n(.*?)(?=^#+ )", README, re.S | re.M)
    assert match, f"no section {section!r} in the README"
    found = []
    for line in match.group(1).splitlines():
        if line.startswith("    .venv/bin/"):
            command, _, comment = line.strip().partition("  #")
            found.append(Command(command.strip(), comment.strip()))
    assert found, f"no commands in the README's section {section!r}"
    return found


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    root = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(root)], check=True, capture_output=True)
    (root / ".venv").symlink_to(VENV)
    # The link is this test's doing, not the user's: a real .venv is a directory, which .gitignore covers.
    with (root / ".git/info/exclude").open("a") as exclude:
        exclude.write("/.venv\n")
    return root


def user_env(tmp_path: Path, activated: bool) -> dict[str, str]:
    """A shell's environment as a new user has it, without this test run's settings."""
    env = {"HOME": str(tmp_path), "LANG": "C.UTF-8", "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
    system_path = "/usr/local/bin:/usr/bin:/bin"
    if activated:
        env["VIRTUAL_ENV"] = str(VENV)
        env["PATH"] = f"{VENV / 'bin'}:{system_path}"
    else:
        # Whatever `python` a user's PATH finds first, the README's commands must not need it.
        decoys = tmp_path / "decoys"
        decoys.mkdir()
        for name in ("python", "python3"):
            decoy = decoys / name
            decoy.write_text("#!/bin/sh\necho \"not the project's Python\" >&2\nexit 3\n")
            decoy.chmod(0o755)
        env["PATH"] = f"{decoys}:{system_path}"
    return env


def sh(root: Path, line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One README line through a POSIX shell, as a user pastes it."""
    done = subprocess.run(
        ["/bin/sh", "-c", line], cwd=root, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{line!r} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.parametrize("activated", [False, True], ids=["no-activated-env", "activated-env"])
def test_the_readme_pipeline_commands_run_without_warnings_and_leave_git_clean(
    clone: Path, tmp_path: Path, activated: bool
) -> None:
    env = user_env(tmp_path, activated)
    commands = readme_commands("Documents and the knowledge base")
    assert [c.line for c in commands][:3] == [
        ".venv/bin/dvc repro --pull", ".venv/bin/dvc status", ".venv/bin/dvc metrics show",
    ]
    for command in commands[:3]:
        done = sh(clone, command.line, env)
        output = done.stdout + done.stderr
        assert "WARNING" not in output and "ERROR" not in output, f"{command.line}:\n{output}"
        if command.line.endswith("status"):
            assert command.comment in output  # "Data and pipelines are up to date."
    assert git(clone, "status", "--porcelain") == ""

    # What the README says a run changes: the stages run (with bin/manage, not the `python` on PATH),
    # write the same outputs for the same inputs, and only metrics/last_run/ (ignored by git) is new.
    assert "dvc repro --force" in README
    forced = sh(clone, ".venv/bin/dvc repro --force", env)
    assert "Running stage 'process_documents'" in forced.stdout and "not the project's Python" not in forced.stderr
    assert git(clone, "status", "--porcelain") == ""
    assert "Data and pipelines are up to date." in sh(clone, ".venv/bin/dvc status", env).stdout
    measured = json.loads((clone / "metrics/last_run/document_processing.json").read_text())
    assert measured["processing_time_seconds"] > 0 and measured["documents_parsed"] == 5
    assert "processing_time_seconds" not in (clone / "metrics/document_processing.json").read_text()


def test_the_readme_api_key_commands_run_as_written_on_a_new_database(clone: Path, tmp_path: Path) -> None:
    env = user_env(tmp_path, activated=False)
    sh(clone, ".venv/bin/python manage.py migrate --noinput", env)  # what ./start.sh does first
    commands = readme_commands("API keys")
    assert any("create_api_key acme-dental" in c.line for c in commands)
    prefix = ""
    for command in commands:
        line = command.line.replace("<prefix>", prefix)
        done = sh(clone, line, env)
        if "create_api_key" in line:
            assert done.stdout.startswith("mlk_"), done.stdout
            prefix = prefix or re.search(r"Created key (\S+)", done.stderr).group(1)
    listed = sh(clone, ".venv/bin/python manage.py list_api_keys", env).stdout
    assert "acme-dental" in listed and prefix in listed
