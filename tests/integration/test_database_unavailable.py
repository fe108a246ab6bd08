"""A database that cannot be reached at all is a 503 to retry, not a 500.

A pool whose connections were all lost opens a new one for the next request; with the
server down that connect is refused, which SQLAlchemy passes on as a bare OSError (seen
as a 500 for a `PUT /v1/traffic` while PostgreSQL restarted under a running rollout).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text

from registry.http import json_errors
from registry.store import Database, DatabaseUnavailable
from tests.processes import free_port


def nowhere() -> Database:
    """PostgreSQL at a port nothing listens on."""
    return Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test")


async def test_a_refused_connection_is_database_unavailable_with_its_cause() -> None:
    database = nowhere()
    try:
        with pytest.raises(DatabaseUnavailable, match="cannot connect to the database") as raised:
            async with database.transaction() as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    finally:
        await database.dispose()


async def test_an_unreachable_database_is_answered_503_storage_unavailable() -> None:
    database = nowhere()

    async def write(_request: web.Request) -> web.Response:
        async with database.transaction():
            return web.json_response({})

    app = web.Application(middlewares=[json_errors])
    app.router.add_put("/thing", write)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        response = await client.put("/thing")
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "storage_unavailable"
    finally:
        await client.close()
        await database.dispose()
