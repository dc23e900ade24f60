"""A throwaway PostgreSQL server for the tests: initdb into a temp folder, start it on a free
loopback port, hand out one fresh database per test, stop it and delete everything at the end.

PostgreSQL refuses to run as root, so under uid 0 (CI) the server runs as the ``postgres``
system user that the Debian package creates. The superuser (``postgres``) connects without a
password over the server's
unix socket; the role the tests use (``imgsearch``) needs its password over TCP, so the tests
exercise real password handling (masking, a wrong password).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

USER = "imgsearch"
PASSWORD = "s3cret-Pw"  # appears in test URLs only; the tests check it is never printed


def find_bin_dir() -> Path | None:
    """The folder with initdb and pg_ctl: Debian keeps them out of PATH, per major version."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for folder in candidates:
        if os.access(os.path.join(folder, "initdb"), os.X_OK):
            return Path(folder)
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _version_key(folder: str) -> int:
    name = Path(folder).parent.name
    return int(name) if name.isdigit() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One running server. ``database()`` makes an empty database and returns its URL."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port = free_port()
        self.run_as = "postgres" if os.geteuid() == 0 else None
        # Not below pytest's tmp folders: under root those are private to root.
        self.home = Path(tempfile.mkdtemp(prefix="imgsearch-pg-"))
        self.data = self.home / "data"
        self.socket_dir = self.home
        try:
            self._start()
        except BaseException:
            self.stop()  # no server or folder left behind by a start that failed
            raise

    def _start(self) -> None:
        if self.run_as:
            record = pwd.getpwnam(self.run_as)
            os.chown(self.home, record.pw_uid, record.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",  # a throwaway cluster: nothing is worth an fsync
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.socket_dir}",
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c shared_buffers=32MB",
                "-c max_connections=50",
            ]
        )
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.home / "log"), "-o", options,
        )  # fmt: skip
        self.admin(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.home)
        if done.returncode != 0:
            log = self.home / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed: {done.stderr.strip()}\n{tail}")

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser, outside a transaction (CREATE DATABASE)."""
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database owned by the test role; its URL (with the password)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.admin(f"CREATE DATABASE {name} OWNER {USER}")
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.home, ignore_errors=True)
