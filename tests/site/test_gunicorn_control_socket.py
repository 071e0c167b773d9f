"""gunicorn's control socket: each instance on a host has its own, or none, so stopping one leaves the others alone."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.helpers import stop_service

pytestmark = pytest.mark.slow


def wait_for(path: Path, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    """A home of the test's own, where gunicorn's shared default socket would appear."""
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": ""}


def test_two_instances_share_no_control_socket_by_default(live_service, tmp_path, home):
    first = live_service(workers=1, extra_env=home)
    second = live_service(workers=1, extra_env=home)

    assert not (tmp_path / "home" / ".gunicorn" / "gunicorn.ctl").exists()
    stop_service(first)
    assert second.request("GET", "/health")[0] == 200


def test_stopping_one_instance_leaves_the_others_own_control_socket(live_service, tmp_path, home):
    first_socket, second_socket = tmp_path / "first.ctl", tmp_path / "second.ctl"
    first = live_service(workers=1, extra_env={**home, "GUNICORN_CONTROL_SOCKET": str(first_socket)})
    live_service(workers=1, extra_env={**home, "GUNICORN_CONTROL_SOCKET": str(second_socket)})
    assert wait_for(first_socket) and wait_for(second_socket)

    stop_service(first)

    assert not first_socket.exists()
    assert accepts_connections(second_socket)
