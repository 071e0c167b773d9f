"""What the service writes beside the code while it runs stays out of `git status`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import ROOT


def test_the_sqlite_database_and_its_write_ahead_files_do_not_show_in_git_status(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, capture_output=True)
    for suffix in ("", "-wal", "-shm", "-journal"):  # SQLite in WAL mode keeps the last two while it is open
        (clone / f"data/mlops.sqlite3{suffix}").write_bytes(b"")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == ""
