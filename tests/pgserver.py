"""A throw-away PostgreSQL server for the tests and the benchmarks.

`python -m tests.pgserver -- <command>` runs initdb in a temporary directory,
starts the server on a free loopback port, runs the command with DATABASE_URL
pointing at it (plus MLOPS_TEST_PG_* variables so tests can stop and restart
the server), then stops the server and removes the directory.

PostgreSQL refuses to run as root; as root the server runs as the `postgres`
user (made by Debian's postgresql packages).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, newest version first."""
    explicit = os.environ.get("PG_BINDIR")
    candidates = [explicit] if explicit else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TempPostgres:
    bindir: Path
    datadir: Path
    port: int
    user: str | None  # run the server binaries as this user (when we are root)

    DB = "mlops"
    ROLE = "mlops"

    @property
    def url(self) -> str:
        return f"postgresql://{self.ROLE}@127.0.0.1:{self.port}/{self.DB}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True)

    @classmethod
    def create(cls, bindir: Path | None = None) -> TempPostgres:
        bindir = bindir or find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install the postgresql package")
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise RuntimeError("running as root needs a 'postgres' user to run the server") from None
        base = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
        if user:
            shutil.chown(base, user)
        server = cls(bindir=bindir, datadir=base / "data", port=free_port(), user=user)
        server._run("initdb", "-D", str(server.datadir), "-U", cls.ROLE, "--auth=trust", "-E", "UTF8", "--no-sync")
        with open(server.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"port = {server.port}\n"
                f"unix_socket_directories = '{base}'\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
                "fsync = on\n"
            )
        server.start()
        server._run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", cls.ROLE, cls.DB)
        return server

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.datadir), "status", check=False).returncode == 0

    def start(self) -> None:
        if self.running():
            return
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.datadir.parent / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.url,
            "MLOPS_TEST_PG_BINDIR": str(self.bindir),
            "MLOPS_TEST_PG_DATADIR": str(self.datadir),
            "MLOPS_TEST_PG_PORT": str(self.port),
            "MLOPS_TEST_PG_USER": self.user or "",
        }

    @classmethod
    def from_env(cls) -> TempPostgres | None:
        """The server a surrounding `python -m tests.pgserver` started, if any."""
        datadir = os.environ.get("MLOPS_TEST_PG_DATADIR")
        if not datadir:
            return None
        return cls(
            bindir=Path(os.environ["MLOPS_TEST_PG_BINDIR"]),
            datadir=Path(datadir),
            port=int(os.environ["MLOPS_TEST_PG_PORT"]),
            user=os.environ.get("MLOPS_TEST_PG_USER") or None,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL on port {self.port} did not come up")


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python -m tests.pgserver -- <command> [args...]", file=sys.stderr)
        return 2
    server = TempPostgres.create()
    print(f"PostgreSQL {server.bindir.parent.name} on 127.0.0.1:{server.port} ({server.datadir})", flush=True)
    try:
        return subprocess.call(argv, env={**os.environ, **server.env()})
    finally:
        server.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
