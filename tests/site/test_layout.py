"""The README's Layout section is true: every file and folder it names exists, and it names every room."""

from __future__ import annotations

import re

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _layout_section() -> str:
    start = README.index("\n## Layout\n")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def test_every_path_the_layout_section_names_exists() -> None:
    named = set(re.findall(r"`((?:metrics_app|documents_app|mlops_site)/[\w/.]*)`", _layout_section()))
    assert len(named) > 20
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []


def test_the_layout_section_names_every_room_of_metrics_app() -> None:
    rooms = {p.name for p in (ROOT / "metrics_app").iterdir() if (p / "__init__.py").exists()}
    rooms -= {"migrations"}
    unnamed = sorted(room for room in rooms if f"`metrics_app/{room}/" not in _layout_section())
    assert unnamed == []


def test_each_newcomer_question_points_at_one_file_that_exists() -> None:
    answers = re.findall(r"^\| [^|]+\? \| `([^`]+)` \|$", _layout_section(), re.M)
    assert len(answers) >= 10
    assert [a for a in answers if not (ROOT / a).is_file()] == []
