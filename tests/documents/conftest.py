"""The documents tests' shared clone of the repository, built once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.documents.helpers import dvc, fresh_clone


@pytest.fixture(scope="session")
def built_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of the repository after `dvc repro --pull`, then `dvc repro --force`.

    The pull alone runs no stage (the outputs come from the remote); the forced run
    builds the sample knowledge base here, as on a machine that ran the pipeline,
    so the content-hash cache holds the sample documents. Shared by the tests
    that only read it; tests that change files make their own copy.
    """
    root = fresh_clone(tmp_path_factory.mktemp("clone"))
    dvc(root, "repro", "--pull")
    dvc(root, "repro", "--force")
    return root
