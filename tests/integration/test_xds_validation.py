"""A config the real Envoy rejects is never published, and the caller is told why."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import auth
from tests.integration.conftest import Register, StartClient
from tests.integration.test_xds_protocol import poll, serve_model

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def client(make_settings: Any, database_url: str, start_client: StartClient) -> TestClient[Any, Any]:
    return await start_client(make_settings(database_url, AEGIS_XDS_HOLD_SECONDS=0.2))


async def test_envoy_rejecting_a_header_match_keeps_the_old_config(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    _, before = await poll(client, "routes")
    body = {"weights": {"1": 90, "2": 10}, "match": [{"headers": {"bad header\n": "x"}}]}
    response = await client.put("/v1/traffic/m", json=body, headers=auth("operator"))
    assert response.status == 422
    message = (await response.json())["error"]["message"]
    assert "envoy rejected the config" in message
    assert (await poll(client, "routes", before["version_info"]))[0] == 304
    document = await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json()
    assert document["weights"] == {"1": 100, "2": 0}
    nodes = await (await client.get("/v1/xds/nodes", headers=auth("viewer"))).json()
    assert "envoy rejected the config" in nodes["last_publish_error"]
