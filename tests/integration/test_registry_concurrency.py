"""Concurrent registrations through the live app, on SQLite and on PostgreSQL: none is refused by a race."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient

from controlplane.settings import Settings
from tests.conftest import auth
from tests.integration.conftest import Register, sha256_hex, stored_files

CLIENTS = 50
ARTIFACT = b"concurrent-weights" * 4096


async def test_fifty_registrations_of_one_version_with_the_same_bytes_are_all_accepted(
    register: Register, client: TestClient[Any, Any], settings: Settings
) -> None:
    responses = await asyncio.gather(*(register("racy", "1", ARTIFACT) for _ in range(CLIENTS)))
    statuses = Counter(response.status for response in responses)
    assert statuses == {201: 1, 200: CLIENTS - 1}, statuses
    documents = [await response.json() for response in responses]
    assert {d["checksum"] for d in documents} == {sha256_hex(ARTIFACT)}
    assert len({d["created_at"] for d in documents}) == 1  # every answer is the one stored version
    model = await (await client.get("/v1/registry/racy", headers=auth("viewer"))).json()
    assert [v["version"] for v in model["versions"]] == ["1"]
    checksum = sha256_hex(ARTIFACT)
    assert stored_files(settings.server.data_dir) == [f"sha256/{checksum[:2]}/{checksum}"]


async def test_fifty_versions_of_a_new_model_at_once_are_all_registered(
    register: Register, client: TestClient[Any, Any]
) -> None:
    responses = await asyncio.gather(
        *(register("fresh-model", f"v{n}", ARTIFACT + str(n).encode()) for n in range(CLIENTS))
    )
    refused = [(response.status, await response.text()) for response in responses if response.status != 201]
    assert refused == []
    model = await (await client.get("/v1/registry/fresh-model", headers=auth("viewer"))).json()
    assert sorted(v["version"] for v in model["versions"]) == sorted(f"v{n}" for n in range(CLIENTS))
    for n in (0, CLIENTS - 1):
        validate = await client.get(f"/v1/registry/fresh-model/v{n}/validate", headers=auth("viewer"))
        report = await validate.json()
        assert report["valid"] is True


async def test_concurrent_registrations_of_one_version_with_other_bytes_keep_one_and_refuse_the_rest(
    register: Register, client: TestClient[Any, Any], settings: Settings
) -> None:
    artifacts = [ARTIFACT + str(n).encode() for n in range(CLIENTS)]
    responses = await asyncio.gather(*(register("contested", "1", artifact) for artifact in artifacts))
    statuses = Counter(response.status for response in responses)
    assert statuses == {201: 1, 409: CLIENTS - 1}, statuses
    [winner] = [await response.json() for response in responses if response.status == 201]
    # The losers' bytes are gone: the store holds exactly the registered version's blob.
    assert stored_files(settings.server.data_dir) == [f"sha256/{winner['checksum'][:2]}/{winner['checksum']}"]
