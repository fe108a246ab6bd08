"""Fixtures shared by every test: a data directory and a database of its own per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from controlplane.demo.processes import free_port, port_share, use_ports
from controlplane.settings import Settings, load_settings

# Each pytest-xdist worker (gw0, gw1, ...) chooses ports from a part of the range of its own,
# and what a worker starts that chooses ports itself (`./run demo`) from another part: a port
# chosen and not bound yet is never someone else's choice.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    _WORKERS = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    use_ports(*port_share(int(_WORKER[2:]), _WORKERS + 1))
    os.environ["AEGIS_LOCAL_PORTS"] = "{}-{}".format(*port_share(_WORKERS, _WORKERS + 1))

POSTGRES_DSN = os.environ.get("AEGIS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

SIGN_KEY = "test-sign-key-0123456789"
TOKENS = {
    "admin": "admin-token-aaaaaaaa",
    "operator": "operator-token-bbbbbbbb",
    "viewer": "viewer-token-cccccccc",
}
API_TOKENS = ",".join(f"{role}:{token}" for role, token in TOKENS.items())


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL database created and dropped here."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'aegis.db'}"
        return
    name = f"aegis_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(database_url: str = "", **env: Any) -> Settings:
        values = {
            # A port of its own: `start_client` serves there, so the public URL (signed
            # download URLs) names the address the test app really answers on.
            "AEGIS_LISTEN": f"127.0.0.1:{free_port()}",
            "AEGIS_DATA_DIR": str(tmp_path / "data"),
            "AEGIS_DATABASE_URL": database_url,
            "AEGIS_API_TOKENS": API_TOKENS,
            "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
            # gRPC ADS on a free port of its own (app[ADS].port), never the shared default.
            "AEGIS_XDS_GRPC_LISTEN": "127.0.0.1:0",
        }
        values.update({key: str(value) for key, value in env.items()})
        return load_settings(values)

    return build


@pytest.hookimpl(tryfirst=True)
def pytest_warning_recorded(warning_message: Any) -> None:
    """A warning's text crosses from an xdist worker to the controller as UTF-8: a lone surrogate
    in it (a fuzzed header quoted by the library that warns) is an INTERNALERROR that ends the
    whole run. Such characters are escaped before the worker sends the warning."""
    message = warning_message.message
    if isinstance(message, Warning):
        message.args = tuple(
            arg.encode("utf-8", "backslashreplace").decode() if isinstance(arg, str) else arg
            for arg in message.args
        )
