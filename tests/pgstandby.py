"""A streaming standby of the server `tests.pgserver` started: `pg_basebackup -R`, on its own loopback port.

The standby replays the primary's WAL as a production replica does; tests pause and resume its replay, or
stop it, to see what the service does when the replica lags or is away.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.pgserver import TempPostgres, free_port


@dataclass
class Standby:
    server: TempPostgres  # its own data directory and port, run as the primary's user
    primary: TempPostgres

    @classmethod
    def of(cls, primary: TempPostgres) -> Standby:
        base = Path(tempfile.mkdtemp(prefix="mlops-standby-"))
        if primary.user:
            shutil.chown(base, primary.user)
        server = TempPostgres(bindir=primary.bindir, datadir=base / "data", port=free_port(), user=primary.user)
        server._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", TempPostgres.ROLE,
                    "-D", str(server.datadir), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync")
        with open(server.datadir / "postgresql.conf", "a") as conf:
            # The copied settings name the primary's port and socket directory: the standby takes its own.
            conf.write(f"\nport = {server.port}\nunix_socket_directories = '{base}'\nhot_standby = on\n"
                       "hot_standby_feedback = on\n")
        server.start()
        server.wait_ready()
        return cls(server=server, primary=primary)

    def url(self, database: str) -> str:
        return f"postgresql://{TempPostgres.ROLE}@127.0.0.1:{self.server.port}/{database}"

    def sql(self, statement: str) -> str:
        done = self.server._run("psql", "-h", "127.0.0.1", "-p", str(self.server.port), "-U", TempPostgres.ROLE,
                                "-d", "postgres", "-Atc", statement)
        return done.stdout.strip()

    def pause_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_resume()")

    def destroy(self) -> None:
        self.server.destroy()
