"""The client tests' Python client on the import path, and their TypeScript package built from its lock file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.clients.helpers import PY_DIR, build_typescript, have_node
from tests.helpers import require

# The Python client as its users import it; appended, so that its own tests/
# folder can never shadow this project's.
if str(PY_DIR) not in sys.path:
    sys.path.append(str(PY_DIR))


@pytest.fixture
def typescript_package() -> Path:
    """A copy of the TypeScript client installed from its lock file and built, its chat route type-checked."""
    require(have_node(), "Node.js and npm (the TypeScript client's tests)")
    return build_typescript()
