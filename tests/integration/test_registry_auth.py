"""Every mutating registry endpoint refuses missing, wrong and too-weak tokens, and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controlplane.settings import Settings
from tests.conftest import TOKENS, auth
from tests.integration.conftest import Register, stored_files, upload_form

WRONG = {"Authorization": "Bearer not-a-real-token"}
NO_SCHEME = {"Authorization": TOKENS["admin"]}

# (method, path, body, minimum role)
MUTATIONS = [
    ("POST", "/v1/registry/register", "upload", "admin"),
    ("POST", "/v1/registry/m/2/promote", {"stage": "canary"}, "operator"),
    ("POST", "/v1/registry/m/rollback", {}, "operator"),
]


async def snapshot(client: TestClient[Any, Any], settings: Settings) -> tuple[Any, list[str]]:
    model = await (await client.get("/v1/registry/m", headers=auth("admin"))).json()
    return model, stored_files(settings.server.data_dir)


def body_for(spec: Any) -> dict[str, Any]:
    if spec == "upload":
        return {"data": upload_form({"model_name": "m", "version": "9"}, b"new bytes")}
    return {"json": spec}


@pytest.mark.parametrize(("method", "path", "body", "role"), MUTATIONS)
async def test_mutations_refuse_bad_tokens_and_change_nothing(
    register: Register, client: TestClient[Any, Any], settings: Settings,
    method: str, path: str, body: Any, role: str,
) -> None:
    await register("m", "1", b"one")
    await register("m", "2", b"two")
    await client.post("/v1/registry/m/1/promote", json={"stage": "prod"}, headers=auth("operator"))
    before = await snapshot(client, settings)
    weaker = {"admin": ["operator", "viewer"], "operator": ["viewer"]}[role]
    attempts = [({}, 401), (WRONG, 401), (NO_SCHEME, 401)] + [(auth(r), 403) for r in weaker]
    for headers, expected in attempts:
        response = await client.request(method, path, headers=headers, **body_for(body))
        assert response.status == expected, (headers, await response.text())
        error = (await response.json())["error"]
        assert error["code"] in ("unauthorized", "forbidden")
        assert TOKENS["admin"] not in error["message"]
        assert await snapshot(client, settings) == before


async def test_roles_nest_admin_can_do_what_operators_and_viewers_can(
    register: Register, client: TestClient[Any, Any]
) -> None:
    await register("m", "1", b"one")
    promoted = await client.post("/v1/registry/m/1/promote", json={"stage": "prod"}, headers=auth("admin"))
    assert promoted.status == 200
    assert (await client.get("/v1/registry/models", headers=auth("admin"))).status == 200
    assert (await client.get("/v1/registry/models", headers=WRONG)).status == 401


async def test_the_actor_is_the_configured_name_never_the_token(
    make_settings: Any, database_url: str, start_client: Any
) -> None:
    settings = make_settings(database_url, AEGIS_API_TOKENS="admin:ci-bot:secret-ci-token")
    client = await start_client(settings)
    headers = {"Authorization": "Bearer secret-ci-token"}
    form = upload_form({"model_name": "m", "version": "1"}, b"bytes")
    document = await (await client.post("/v1/registry/register", data=form, headers=headers)).json()
    assert document["created_by"] == "ci-bot"
    promoted = await (
        await client.post("/v1/registry/m/1/promote", json={"stage": "prod"}, headers=headers)
    ).json()
    actors = {h["actor"] for h in promoted["metadata"]["_registry"]["promotion_history"]}
    assert actors == {"ci-bot"}
    assert "secret-ci-token" not in str(promoted)
