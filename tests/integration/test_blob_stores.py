"""The registry over each blob store: the data directory, a shared directory (file://) and S3.

S3 is moto's standalone server, a real S3-protocol process started here; each test
has a bucket of its own. The database is SQLite: the stores do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from controlplane.settings import Settings
from tests.conftest import auth
from tests.integration.conftest import StartClient, sha256_hex, upload_form
from tests.s3_server import PREFIX, Bucket, S3Server

ARTIFACT = b"stored-by-digest" * 4096


class Stored(Protocol):
    """What a test sees of a blob store, looking behind Aegis's back."""

    def digests(self) -> list[str]: ...

    def read(self, checksum: str) -> bytes: ...

    def tamper(self, checksum: str, content: bytes) -> None: ...

    def remove(self, checksum: str) -> None: ...

    def leftovers(self) -> list[str]:
        """Temporary files, open multipart uploads, objects set aside: what a failure must not leave."""
        ...


@dataclass
class Directory:
    root: Path
    uploads: Path

    def path(self, checksum: str) -> Path:
        return self.root / "sha256" / checksum[:2] / checksum

    def digests(self) -> list[str]:
        found = sorted(self.root.glob("sha256/*/*"))
        # Plain files named by their digest, under a directory named by its first two hex digits.
        assert all(p.is_file() and p.parent.name == p.name[:2] for p in found), found
        return [p.name for p in found]

    def read(self, checksum: str) -> bytes:
        return self.path(checksum).read_bytes()

    def tamper(self, checksum: str, content: bytes) -> None:
        self.path(checksum).write_bytes(content)

    def remove(self, checksum: str) -> None:
        self.path(checksum).unlink()

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.uploads.iterdir()) if self.uploads.exists() else []


@dataclass
class Backend:
    env: dict[str, str]
    stored: Stored


@pytest.fixture(params=["data-dir", "file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    uploads = tmp_path / "data" / "blobs" / "uploads"
    if request.param == "data-dir":
        return Backend({}, Directory(tmp_path / "data" / "blobs", uploads))
    if request.param == "file":
        shared = tmp_path / "shared volume"
        url = "file://" + str(shared).replace(" ", "%20")
        return Backend({"AEGIS_BLOB_STORE": url}, Directory(shared, shared / "uploads"))
    server: S3Server = request.getfixturevalue("s3")
    bucket = server.new_bucket()
    return Backend({"AEGIS_BLOB_STORE": f"s3://{bucket}/{PREFIX}/"}, Bucket(server, bucket, uploads))


@pytest.fixture
async def blob_client(
    backend: Backend, make_settings: Callable[..., Settings], start_client: StartClient
) -> TestClient[Any, Any]:
    return await start_client(make_settings(**backend.env, AEGIS_MAX_ARTIFACT_BYTES=1 << 20))


async def register(client: TestClient[Any, Any], version: str, artifact: bytes, **claims: Any) -> Any:
    form = upload_form({"model_name": "m", "version": version, **claims}, artifact)
    return await client.post("/v1/registry/register", data=form, headers=auth("admin"))


async def validate(client: TestClient[Any, Any], version: str = "1") -> dict[str, Any]:
    response = await client.get(f"/v1/registry/m/{version}/validate", headers=auth("viewer"))
    assert response.status == 200
    report: dict[str, Any] = await response.json()
    return report


async def test_an_artifact_is_stored_once_under_its_digest_and_reused(
    blob_client: TestClient[Any, Any], backend: Backend
) -> None:
    checksum = sha256_hex(ARTIFACT)
    assert (await register(blob_client, "1", ARTIFACT)).status == 201
    assert backend.stored.digests() == [checksum]
    assert backend.stored.read(checksum) == ARTIFACT
    assert (await register(blob_client, "1", ARTIFACT)).status == 200
    assert (await register(blob_client, "2", ARTIFACT)).status == 201  # same bytes, another version
    assert (await register(blob_client, "1", b"other bytes")).status == 409
    assert backend.stored.digests() == [checksum]
    assert backend.stored.leftovers() == []


async def test_validate_rehashes_the_stored_bytes_and_sees_tampering(
    blob_client: TestClient[Any, Any], backend: Backend
) -> None:
    checksum = sha256_hex(ARTIFACT)
    await register(blob_client, "1", ARTIFACT)
    assert (await validate(blob_client))["valid"] is True
    backend.stored.tamper(checksum, b"tampered" + ARTIFACT)
    report = await validate(blob_client)
    assert (report["valid"], report["checksum_ok"], report["signature_ok"]) == (False, False, True)
    assert report["actual_checksum"] == sha256_hex(b"tampered" + ARTIFACT)
    refused = await blob_client.post(
        "/v1/registry/m/1/promote", json={"stage": "prod"}, headers=auth("operator")
    )
    assert refused.status == 409
    assert "fails validation" in (await refused.json())["error"]["message"]
    backend.stored.remove(checksum)
    missing = await validate(blob_client)
    assert (missing["valid"], missing["actual_checksum"]) == (False, None)
    assert "missing" in missing["problems"][0]
    gone = await blob_client.get("/v1/registry/m/1/artifact", headers=auth("viewer"))
    assert gone.status == 404


async def test_downloads_give_the_stored_bytes_with_a_token_and_through_a_signed_url(
    blob_client: TestClient[Any, Any], backend: Backend
) -> None:
    await register(blob_client, "1", ARTIFACT)
    signed = await blob_client.post(
        "/v1/registry/m/1/artifact-url", json={"ttl_seconds": 300}, headers=auth("viewer")
    )
    url = (await signed.json())["url"]
    async with aiohttp.ClientSession() as anonymous:
        for headers in ({}, auth("viewer")):
            target = url if not headers else str(blob_client.make_url("/v1/registry/m/1/artifact"))
            async with anonymous.get(target, headers=headers) as download:
                assert download.status == 200, await download.text()
                assert await download.read() == ARTIFACT
                redirects = download.history
        first = redirects[0] if redirects else download
        assert first.headers["X-Aegis-Checksum-Sha256"] == sha256_hex(ARTIFACT)
        if isinstance(backend.stored, Bucket):
            # The bytes came from the store through a presigned URL, not through Aegis.
            assert [r.status for r in redirects] == [307]
            location = urlsplit(redirects[0].headers["Location"])
            assert f"{location.scheme}://{location.netloc}" == backend.stored.server.endpoint
            query = parse_qs(location.query)
            assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
            assert 60 <= int(query["X-Amz-Expires"][0]) <= 900
        else:
            assert redirects == ()


async def test_a_rejected_upload_leaves_nothing_in_the_store(
    blob_client: TestClient[Any, Any], backend: Backend
) -> None:
    too_large = await register(blob_client, "1", b"x" * ((1 << 20) + 1))
    assert too_large.status == 413
    wrong_claim = await register(blob_client, "1", ARTIFACT, checksum=sha256_hex(b"something else"))
    assert wrong_claim.status == 422
    assert backend.stored.digests() == []
    assert backend.stored.leftovers() == []
