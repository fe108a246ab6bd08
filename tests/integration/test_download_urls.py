"""Signed download URLs are built on the configured public URL, never on the request's Host header."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from controlplane.settings import Settings
from tests.conftest import auth
from tests.integration.conftest import StartClient, upload_form
from tests.processes import free_port

ARTIFACT = b"signed-url-weights" * 512
EVIL = {"Host": "evil.example"}


async def register_and_sign(client: TestClient[Any, Any], *, headers: dict[str, str]) -> str:
    metadata = {"model_name": "m", "version": "1"}
    form = upload_form(metadata, ARTIFACT)
    response = await client.post("/v1/registry/register", data=form, headers=auth("admin"))
    assert response.status == 201
    signed = await client.post("/v1/registry/m/1/artifact-url", headers={**auth("viewer"), **headers})
    assert signed.status == 200
    url: str = (await signed.json())["url"]
    return url


async def test_a_forged_host_header_does_not_move_the_url_off_the_configured_origin(
    make_settings: Callable[..., Settings], start_client: StartClient
) -> None:
    client = await start_client(make_settings(AEGIS_PUBLIC_URL="https://models.example.com/aegis/"))
    url = await register_and_sign(client, headers=EVIL)
    assert url.startswith("https://models.example.com/aegis/v1/registry/m/1/artifact?expires=")
    assert "evil" not in url
    # Behind a proxy that strips the prefix, the rest of the URL is what Aegis serves.
    download = await client.get(url.removeprefix("https://models.example.com/aegis"))
    assert download.status == 200
    assert await download.read() == ARTIFACT


@pytest.mark.parametrize("forged", [EVIL, {"Host": "127.0.0.1:1"}, {"X-Forwarded-Host": "evil.example"}])
async def test_by_default_the_url_is_the_listen_address_and_downloads_as_given(
    make_settings: Callable[..., Settings], start_client: StartClient, forged: dict[str, str]
) -> None:
    port = free_port()
    client = await start_client(make_settings(AEGIS_LISTEN=f"127.0.0.1:{port}"))
    url = await register_and_sign(client, headers=forged)
    assert url.startswith(f"http://127.0.0.1:{port}/v1/registry/m/1/artifact?")
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as download:
        assert download.status == 200
        assert await download.read() == ARTIFACT
