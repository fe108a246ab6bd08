"""Several `aegis serve` replicas on one PostgreSQL database, and a private PostgreSQL to restart.

Each replica has its own data directory (its log is there) and its own ports; they
share only the database, as replicas on separate hosts would. A private server
(initdb/pg_ctl from the Debian packages, run as the `postgres` user because initdb
refuses root) is for tests that stop and start PostgreSQL: the machine's shared
server is never restarted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from tests.conftest import API_TOKENS, POSTGRES_DSN, SIGN_KEY
from tests.e2e.stack import AegisApi
from tests.processes import AegisServer, free_port, wait_for_http

T = TypeVar("T")
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


async def create_database(admin_dsn: str = POSTGRES_DSN) -> str:
    """A fresh database on the server of `admin_dsn`; returns its postgresql:// URL."""
    name = f"aegis_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{admin_dsn.rsplit('/', 1)[0]}/{name}"


async def drop_database(url: str, admin_dsn: str = POSTGRES_DSN) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


class Replica(AegisApi):
    def __init__(self, root: Path, replica_id: str, database_url: str, extra_env: dict[str, str]) -> None:
        self.replica_id = replica_id
        super().__init__(
            AegisServer(
                {
                    "AEGIS_DATA_DIR": str(root / replica_id),
                    "AEGIS_DATABASE_URL": database_url,
                    "AEGIS_REPLICA_ID": replica_id,
                    "AEGIS_API_TOKENS": API_TOKENS,
                    "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
                    "AEGIS_XDS_HOLD_SECONDS": "2",
                    **extra_env,
                }
            )
        )

    def traffic(self, model: str) -> dict[str, Any]:
        document: dict[str, Any] = self.api("GET", f"/v1/traffic/{model}", role="viewer")
        return document

    def nodes(self) -> dict[str, Any]:
        document: dict[str, Any] = self.api("GET", "/v1/xds/nodes", role="viewer")
        return document


def start_replicas(
    root: Path, database_url: str, names: list[str], extra_env: dict[str, str] | None = None
) -> list[Replica]:
    """Start the replicas side by side (they start together, as after a deploy) and wait for each.

    `extra_env` should name AEGIS_ENVOY_LISTENER: replicas of one deployment give Envoy the
    same listener (else their listener versions differ)."""
    replicas = [Replica(root, name, database_url, extra_env or {}) for name in names]
    for replica in replicas:
        data_dir = Path(replica.aegis.env["AEGIS_DATA_DIR"])
        data_dir.mkdir(parents=True, exist_ok=True)
        replica.aegis.log_file = (data_dir / "aegis.log").open("ab")
        replica.aegis.process = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "serve"],
            env=replica.aegis.env, stdout=replica.aegis.log_file, stderr=subprocess.STDOUT,
        )
    for replica in replicas:
        wait_for_http(f"{replica.aegis.url}/healthz", process=replica.aegis.process)
    return replicas


def eventually(check: Callable[[], T | None], *, within: float, what: str) -> tuple[T, float]:
    """Call `check` until it returns something (not None); that value and the seconds it took."""
    started = time.monotonic()
    last: Any = None
    while True:
        try:
            value = check()
        except Exception as exc:  # an API error counts as "not yet"
            value, last = None, exc
        if value is not None:
            return value, time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within} s (last error: {last})")
        time.sleep(0.01)


class PrivatePostgres:
    """A PostgreSQL server of the test's own, on a free port, that the test may stop and start."""

    def __init__(self) -> None:
        if shutil.which("runuser") is None or not (POSTGRES_BIN / "initdb").exists():
            raise RuntimeError("needs the Debian postgresql package (initdb, pg_ctl) and runuser")
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="aegis-pg-"))
        shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        self.port = free_port()
        self._as_postgres(str(POSTGRES_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "--no-sync")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command], check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory,
        )

    def start(self) -> None:
        self._as_postgres(
            str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.directory / "log"),
            "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

