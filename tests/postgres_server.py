"""A real PostgreSQL server for tests (Debian's package), in a temporary directory, on 127.0.0.1."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from live_server import free_port


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, else in Debian's versioned directory."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@dataclass
class PostgresServer:
    root: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """SIGINT (PostgreSQL's fast shutdown) to the postmaster, by the pid it wrote."""
        pid_file = self.root / "data" / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb in a new temporary directory, then the server on a free port of 127.0.0.1 (trust
    authentication, user postgres). PostgreSQL refuses to run as root: as root, it runs as the
    ``postgres`` user, in a directory of its own (pytest's are private to root)."""
    initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
    if initdb is None or postgres is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="helios-postgres-"))
    if as_user:
        shutil.chown(root, "postgres")
        os.chmod(root, 0o755)
    data, port = root / "data", free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    log = open(root / "postgres.log", "w")
    subprocess.Popen([*as_user, postgres, "-D", str(data), "-p", str(port), "-k", str(root),
                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], stdout=log, stderr=subprocess.STDOUT,
                     start_new_session=True)
    server = PostgresServer(root, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            import psycopg

            psycopg.connect(server.url(), connect_timeout=2).close()
            return server
        except psycopg.OperationalError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"PostgreSQL did not start:\n{(root / 'postgres.log').read_text()[-3000:]}")
