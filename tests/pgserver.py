"""A throw-away PostgreSQL server for the tests and the benchmarks, with PgBouncer in front of it.

`python -m tests.pgserver -- <command>` runs initdb in a temporary directory,
starts the server on a free loopback port and PgBouncer in transaction pooling
mode on another, runs the command with DATABASE_URL pointing at PgBouncer
(with DATABASE_POOLING=transaction), then stops both and removes the
directory. MLOPS_TEST_PG_* variables let tests stop and restart the server,
and MLOPS_TEST_PG_DIRECT_URL reaches it without PgBouncer.

`python -m tests.pgserver --direct -- <command>` leaves PgBouncer out: the
benchmarks' figures are the server's own. Without PgBouncer installed, the
command talks to the server directly and says so; with CI=true that is an
error instead (exit code 3).

PostgreSQL and PgBouncer refuse to run as root; as root both run as the
`postgres` user (made by Debian's postgresql packages).
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
            "DATABASE_POOLING": "none",
            "MLOPS_TEST_PG_DIRECT_URL": self.url,
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


def find_pgbouncer() -> Path | None:
    """The pgbouncer binary: on PATH, else where Debian's package puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    return Path(found) if found else None


@dataclass
class TempPgBouncer:
    """PgBouncer in transaction pooling mode in front of a TempPostgres, in the server's temporary directory.

    Every database name goes through to the server (`* =`), so pytest-django's
    test database and the databases tests create themselves are pooled too.
    Authentication is trust, as on the server (loopback only); the server's
    role is the one user PgBouncer knows, and its admin console (database
    `pgbouncer`) answers SHOW commands to it.
    """

    binary: Path
    directory: Path
    port: int
    server: TempPostgres
    process: subprocess.Popen | None = None

    ADMIN_DB = "pgbouncer"
    # Client connections: the live-service tests run gunicorn workers of four threads each, a folder and a
    # qcluster beside the test process; each thread keeps its connection (DB_CONN_MAX_AGE).
    MAX_CLIENT_CONN = 500
    # Server connections per database and user: enough that no live-service test waits for one; the
    # server takes 200 (TempPostgres).
    POOL_SIZE = 40
    # Seconds a query waits for a server connection before PgBouncer closes its client: while the server is
    # down, a request then fails (503) instead of waiting out the HTTP client (the README's setting is 10).
    QUERY_WAIT_TIMEOUT = 5
    # Seconds between PgBouncer's attempts to log in to a server that refused the last one; until the next
    # attempt, clients wait. Tests restart the server and go on at once (PgBouncer's default is 15).
    SERVER_LOGIN_RETRY = 1

    @property
    def url(self) -> str:
        return f"postgresql://{TempPostgres.ROLE}@127.0.0.1:{self.port}/{TempPostgres.DB}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{TempPostgres.ROLE}@127.0.0.1:{self.port}/{self.ADMIN_DB}"

    @classmethod
    def start(cls, server: TempPostgres, binary: Path, timeout: float = 20.0) -> TempPgBouncer:
        bouncer = cls(binary=binary, directory=server.datadir.parent, port=free_port(), server=server)
        config = bouncer.directory / "pgbouncer.ini"
        users = bouncer.directory / "pgbouncer-users.txt"
        users.write_text(f'"{TempPostgres.ROLE}" ""\n')
        config.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={server.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {bouncer.port}\n"
            f"unix_socket_dir = {bouncer.directory}\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"admin_users = {TempPostgres.ROLE}\n"
            "pool_mode = transaction\n"
            f"max_client_conn = {cls.MAX_CLIENT_CONN}\n"
            f"default_pool_size = {cls.POOL_SIZE}\n"
            f"query_wait_timeout = {cls.QUERY_WAIT_TIMEOUT}\n"
            f"server_login_retry = {cls.SERVER_LOGIN_RETRY}\n"
            f"logfile = {bouncer.directory / 'pgbouncer.log'}\n"
        )
        owner: dict[str, object] = {}
        if server.user:
            entry = pwd.getpwnam(server.user)
            for path in (config, users):
                shutil.chown(path, server.user)
            owner = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        # Not daemonized: the process we started is PgBouncer itself, stopped by its id in stop().
        bouncer.process = subprocess.Popen(
            [str(binary), "--quiet", str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, **owner,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if bouncer.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {bouncer.process.returncode}:\n{bouncer.log()}")
            try:
                with socket.create_connection(("127.0.0.1", bouncer.port), timeout=0.5):
                    return bouncer
            except OSError:
                time.sleep(0.05)
        bouncer.stop()
        raise TimeoutError(f"pgbouncer on port {bouncer.port} did not come up:\n{bouncer.log()}")

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown) to the process started, then wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.url,
            "DATABASE_POOLING": "transaction",
            "MLOPS_TEST_PGBOUNCER_ADMIN_URL": self.admin_url,
        }


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def main(argv: list[str]) -> int:
    options: list[str] = []
    if "--" in argv:
        options, argv = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    if not argv or set(options) - {"--direct"}:
        print("usage: python -m tests.pgserver [--direct] -- <command> [args...]", file=sys.stderr)
        return 2
    binary = None if "--direct" in options else find_pgbouncer()
    if binary is None and "--direct" not in options:
        if in_ci():
            print("pgbouncer not found (install the pgbouncer package), and CI=true does not allow running "
                  "without it", file=sys.stderr)
            return 3
        print("pgbouncer not found (install the pgbouncer package): the command talks to PostgreSQL directly, "
              "NOT through PgBouncer", flush=True)
    server = TempPostgres.create()
    print(f"PostgreSQL {server.bindir.parent.name} on 127.0.0.1:{server.port} ({server.datadir})", flush=True)
    bouncer = None
    try:
        env = {**os.environ, **server.env()}
        if binary is not None:
            bouncer = TempPgBouncer.start(server, binary)
            print(f"PgBouncer (transaction pooling) on 127.0.0.1:{bouncer.port}", flush=True)
            env.update(bouncer.env())
        return subprocess.call(argv, env=env)
    finally:
        if bouncer is not None:
            bouncer.stop()
        server.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
