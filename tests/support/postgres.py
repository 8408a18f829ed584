"""A real PostgreSQL for tests: ``initdb`` and ``pg_ctl`` in a temporary folder.

:class:`Postgres` makes a throw-away cluster (trust authentication for loopback only,
``fsync=off``: nothing here has to survive a power cut), listening on 127.0.0.1 at a free
port with its Unix socket in its own folder. ``initdb`` refuses to run as root, so when
the tests run as root the cluster belongs to ``nobody`` (its folder is handed over first).

``stop()`` and ``start()`` take the server away and bring it back on the same port (the
outage tests); ``database()`` makes a fresh database and returns its URL, so one server
serves a whole session while every test keeps its own data.

The ``postgres`` fixture (``tests/conftest.py`` does not know it: a test module imports
``postgres_server`` and ``pg_url`` from here) skips, or fails under ``REQUIRE_INTEROP=1``,
when the PostgreSQL programs are missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.interop import require

_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
             "/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")


def _program(name: str) -> str | None:
    for folder in _BIN_DIRS:
        path = Path(folder, name)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """One PostgreSQL server in ``folder`` (see the module doc)."""

    def __init__(self, folder: Path) -> None:
        initdb, pg_ctl = _program("initdb"), _program("pg_ctl")
        require(initdb is not None and pg_ctl is not None,
                "PostgreSQL's initdb and pg_ctl are not installed")
        assert initdb is not None and pg_ctl is not None
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.folder = Path(folder)
        self.data = self.folder / "data"
        self.sockets = self.folder / "sockets"
        self.log_path = self.folder / "postgres.log"
        self.port = _free_tcp_port()
        self.user = "voicebridge"
        self._as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            require(runuser is not None, "runuser is needed to run initdb as nobody")
            assert runuser is not None
            self._as = [runuser, "-u", "nobody", "--"]

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *cmd], check=check, capture_output=True, text=True,
                              timeout=120, cwd=self.folder)

    def init(self) -> Postgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self._as:
            nobody = pwd.getpwnam("nobody")
            for path in (self.folder, self.sockets):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            self.folder.chmod(0o755)
            with contextlib.suppress(OSError):
                for parent in self.folder.parents:    # let nobody reach its folder
                    if parent == Path("/") or parent.stat().st_mode & 0o001:
                        break
                    parent.chmod(parent.stat().st_mode | 0o001)
        self._run(self.initdb, "-D", str(self.data), "-U", self.user, "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        conf = (f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sockets}'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
                "shared_buffers = 32MB\n")
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write(conf)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n", encoding="utf-8")
        return self

    def start(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log_path), "-w",
                  "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                  check=False)

    @property
    def running(self) -> bool:
        return self._run(self.pg_ctl, "-D", str(self.data), "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg  # noqa: PLC0415

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no postgres log)"
        return "--- postgres log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One PostgreSQL for the session (started before, stopped and removed after). Its
    folder is not under pytest's base folder: another pytest session on the machine
    may prune that while this one still runs."""
    folder = Path(tempfile.mkdtemp(prefix="voicebridge-pg-"))
    try:
        server = Postgres(folder / "pg").init()
        server.start()
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: Postgres) -> str:
    """A fresh database on the session's server, running (a test that stopped the server
    gets it back)."""
    if not postgres_server.running:
        postgres_server.start()
    return postgres_server.database()


def records_by_leg(url: str, leg_call_id: str) -> list[dict[str, Any]]:
    """The rows (columns and ``record``) of the calls whose SIP Call-ID is ``leg_call_id``,
    read straight from the database; none while it is away."""
    import psycopg  # noqa: PLC0415
    from psycopg.rows import dict_row  # noqa: PLC0415

    try:
        with psycopg.connect(url, connect_timeout=2, row_factory=dict_row) as conn:
            cur = conn.execute("SELECT call_id, node_id, state, end_reason, ended_at, record "
                               "FROM calls WHERE record->>'leg_call_id' = %s", (leg_call_id,))
            return [dict(row) for row in cur.fetchall()]
    except psycopg.OperationalError:
        return []


def wait_port_closed(port: int, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} still open")


__all__ = ["Postgres", "pg_url", "postgres_server", "records_by_leg", "wait_port_closed"]
