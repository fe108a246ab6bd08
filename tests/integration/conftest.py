"""Fixtures for tests that drive the real aiohttp app over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from controlplane.app import create_app
from controlplane.settings import Settings
from tests.conftest import SIGN_KEY, auth
from tests.s3_server import S3Server

Register = Callable[..., Awaitable[aiohttp.ClientResponse]]
StartClient = Callable[[Settings], Awaitable[TestClient[Any, Any]]]


def hmac_hex(key: str, model_name: str, version: str, checksum: str) -> str:
    """The seed's signature, computed here independently of the code under test."""
    message = f"{model_name}|{version}|{checksum}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
async def start_client() -> AsyncIterator[Callable[[Settings], Awaitable[TestClient[Any, Any]]]]:
    """Start apps on free ports; each is closed at the end (or earlier by the test)."""
    clients: list[TestClient[Any, Any]] = []

    async def start(settings: Settings) -> TestClient[Any, Any]:
        server = TestServer(create_app(settings), host=settings.server.host, port=settings.server.port)
        client: TestClient[Any, Any] = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def client(
    start_client: Callable[[Settings], Awaitable[TestClient[Any, Any]]], settings: Settings
) -> TestClient[Any, Any]:
    return await start_client(settings)


def upload_form(metadata: dict[str, Any] | str, artifact: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    body = metadata if isinstance(metadata, str) else json.dumps(metadata)
    form.add_field("metadata", body, content_type="application/json")
    form.add_field("artifact", artifact, filename="model.bin", content_type="application/octet-stream")
    return form


@pytest.fixture
def register(client: TestClient[Any, Any]) -> Register:
    async def call(
        model_name: str, version: str, artifact: bytes, *, role: str = "admin", **claims: Any
    ) -> aiohttp.ClientResponse:
        metadata = {"model_name": model_name, "version": version, **claims}
        return await client.post(
            "/v1/registry/register", data=upload_form(metadata, artifact), headers=auth(role)
        )

    return call


def stored_files(data_dir: Path) -> list[str]:
    """Every blob and in-flight upload on disk, to prove rejected uploads leave nothing."""
    root = data_dir / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, and this process's environment pointing at it the standard AWS way."""
    for name, value in s3_server.environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server


__all__ = ["SIGN_KEY", "hmac_hex", "sha256_hex", "stored_files", "upload_form"]
