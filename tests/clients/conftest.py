"""The client tests' Python client on the import path, their TypeScript package and Next.js chat app built from lock files."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients.helpers import (
    PY_DIR,
    ChatApp,
    build_nextjs_app,
    build_typescript,
    have_node,
    start_nextjs_app,
    stop_nextjs_app,
)
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


@pytest.fixture
def nextjs_app() -> Path:
    """The Next.js chat app (clients/typescript/examples/nextjs) installed with `npm ci` and built with `next build`."""
    require(have_node(), "Node.js and npm (the Next.js chat app)")
    return build_nextjs_app()


@pytest.fixture
def serve_chat_app(nextjs_app, tmp_path) -> Iterator[Callable[[dict[str, str]], ChatApp]]:
    """Start the built chat app with `next start` in a given environment; stopped after the test."""
    started: list[ChatApp] = []

    def serve(env: dict[str, str]) -> ChatApp:
        chat_app = start_nextjs_app(nextjs_app, env, tmp_path)
        started.append(chat_app)
        return chat_app

    yield serve
    for chat_app in started:
        stop_nextjs_app(chat_app)
