"""What ./test.sh installs: only what the default install uses, each pinned with its reason."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT

HEAVY = {"torch", "sentence-transformers", "transformers", "nvidia-cublas-cu12"}


def _requirements(path: Path, seen: set[Path] | None = None) -> dict[str, str]:
    """Package name -> its line, following `-r` includes as pip does."""
    seen = seen if seen is not None else set()
    seen.add(path)
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("-r"):
            included = (path.parent / stripped[2:].strip()).resolve()
            if included not in seen:
                found.update(_requirements(included, seen))
        elif stripped:
            found[re.split(r"[=<>!~ ;\[]", stripped, maxsplit=1)[0].lower()] = line
    return found


def test_the_test_install_leaves_out_the_optional_pytorch_extra() -> None:
    installed = _requirements(ROOT / "requirements-dev.txt")
    assert "django" in installed and "pytest" in installed
    assert sorted(HEAVY & set(installed)) == []
    assert "torch" in _requirements(ROOT / "requirements-semantic.txt")


def test_every_requirement_is_pinned_and_says_why() -> None:
    for name in ("requirements.txt", "requirements-dev.txt", "requirements-semantic.txt"):
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.lstrip().startswith(("#", "-r")):
                continue
            assert "==" in line and "#" in line, f"{name}: {line!r} is not pinned with a reason"
