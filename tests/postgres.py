"""A throwaway PostgreSQL server for the tests: its own cluster in a temporary directory.

initdb makes the cluster, the server listens on 127.0.0.1 at a free port (and on a unix socket
inside the same directory, so it never touches the system's), and the cluster is stopped and
removed at the end. Durability is switched off: nothing here outlives the test session.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user (or
``nobody`` where the Debian package did not make one). ``make test`` installs the server when no
binaries are found; plain ``pytest`` needs them already there.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

USER = "cachekeeper"
_DEBIAN_BIN = Path("/usr/lib/postgresql")


def find_binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres: from PATH, else Debian's layout."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(
        (p for p in _DEBIAN_BIN.glob("*/bin") if (p / "initdb").is_file()),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)],
    )
    if versions:
        return versions[-1]
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin: "
        "run `make test`, which installs Debian's postgresql package, or install it yourself"
    )


@dataclass
class PostgresServer:
    """A running server; ``create_database()`` gives each test a database of its own."""

    port: int
    password: str
    host: str = "127.0.0.1"
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str, *, password: str | None = None, port: int | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql+psycopg://{USER}:{secret}@{self.host}:{port or self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"test_{next(self._names)}"
        with psycopg.connect(
            host=self.host, port=self.port, user=USER, password=self.password, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    binaries = find_binaries()
    as_user = _server_user()
    # Under /tmp: a short path keeps the unix socket's name within its limit (107 bytes), and the
    # postgres user can reach it, as it may not reach a $TMPDIR inside root's home.
    workdir = Path(tempfile.mkdtemp(prefix="cachekeeper-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        if as_user is not None:
            os.chown(workdir, as_user.pw_uid, as_user.pw_gid)
        password = secrets.token_hex(16)
        (workdir / "password").write_text(password)
        if as_user is not None:
            os.chown(workdir / "password", as_user.pw_uid, as_user.pw_gid)
        data = workdir / "data"
        _run(
            as_user,
            binaries / "initdb",
            "-D",
            data,
            "-U",
            USER,
            "--pwfile",
            workdir / "password",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        server = _start(as_user, binaries, data, workdir, password)
        try:
            yield server
        finally:
            _run(as_user, binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _start(
    as_user: pwd.struct_passwd | None, binaries: Path, data: Path, workdir: Path, password: str
) -> PostgresServer:
    # A port that was free a moment ago can be taken before the server binds it: try another.
    for _attempt in range(3):
        port = free_port()
        options = (
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -F "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=100"
        )
        started = _run(
            as_user,
            binaries / "pg_ctl",
            "-D",
            data,
            "-l",
            workdir / "server.log",
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
            check=False,
        )
        if started.returncode == 0:
            return PostgresServer(port=port, password=password)
    log = (workdir / "server.log").read_text(errors="replace") if (workdir / "server.log").exists() else ""
    raise RuntimeError(f"the test PostgreSQL server did not start: {started.stdout}{started.stderr}\n{log[-2000:]}")


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: this user, or an unprivileged one when this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


def _runuser() -> str:
    # util-linux's runuser lives in sbin, which a root shell's PATH may leave out.
    for candidate in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("running as root needs runuser (util-linux) to start PostgreSQL as another user")


def _run(as_user: pwd.struct_passwd | None, *command: object, check: bool = True) -> subprocess.CompletedProcess:
    argv = [str(part) for part in command]
    if as_user is not None:
        argv = [_runuser(), "-u", as_user.pw_name, "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd="/")
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result
