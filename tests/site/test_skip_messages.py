"""A test that needs a missing component says so in a sentence that reads right for one or several."""

from __future__ import annotations

import pytest

from tests import helpers


def test_a_skip_names_the_missing_components_after_a_plain_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helpers, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        helpers.require(False, "Chromium and chromedriver (Debian packages)")
    assert str(skipped.value) == "not available on this machine: Chromium and chromedriver (Debian packages)"


def test_in_ci_the_same_absence_fails_with_the_same_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helpers, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception) as failed:
        helpers.require(False, "Node.js and npm")
    assert str(failed.value) == "missing on this machine, and CI=true does not allow skipping: Node.js and npm"


def test_nothing_happens_when_the_component_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helpers, "IN_CI", True)
    helpers.require(True, "Chromium and chromedriver (Debian packages)")
