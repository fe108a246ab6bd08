"""Fetch a version's artifact from the registry through a signed URL, and keep it only if it verifies.

The bytes are streamed to a temporary file while hashed in one pass (an artifact
may be larger than memory); the file is moved into place only after the checksum
and the signature check out, so a rejected download leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from modelserver.errors import ArtifactRejected, ArtifactUnavailable
from modelserver.verify import VersionFacts, verify_artifact
from registry.errors import error_message
from registry.signing import Keyring

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # 1 MiB: few enough writes to keep hashing fast, flat memory whatever the size


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact on local disk whose bytes match the registry's signed record."""

    model_name: str
    version: str
    checksum: str
    key_id: str
    path: Path
    size_bytes: int


async def fetch_verified_artifact(
    session: aiohttp.ClientSession,
    registry_url: str,
    model_name: str,
    version: str,
    *,
    token: str,
    data_dir: Path,
    keyring: Keyring,
) -> VerifiedArtifact:
    """Download M/V into data_dir and verify it; ArtifactRejected or ArtifactUnavailable otherwise."""
    version_path = f"/v1/registry/{model_name}/{version}"
    version_url = URL(registry_url.rstrip("/") + version_path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    facts = VersionFacts.from_document(
        await _registry_json(session, "GET", version_url, headers=headers)
    )
    grant = await _registry_json(
        session, "POST", version_url / "artifact-url", headers=headers
    )
    if not isinstance(grant.get("url"), str):
        raise ArtifactUnavailable(f"POST {version_path}/artifact-url answered without a url")
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    staged, downloaded_checksum, size = await _download(session, URL(grant["url"], encoded=True), data_dir)
    try:
        verify_artifact(model_name, version, facts, downloaded_checksum=downloaded_checksum, keyring=keyring)
    except ArtifactRejected:
        await asyncio.to_thread(staged.unlink, missing_ok=True)
        raise
    final = data_dir / f"{model_name}-{version}.bin"
    await asyncio.to_thread(staged.replace, final)
    log.info("artifact of %s %s verified: sha256 %s, key %s, %d bytes in %s",
             model_name, version, facts.checksum, facts.key_id, size, final)
    return VerifiedArtifact(model_name, version, facts.checksum, facts.key_id, final, size)


async def _registry_json(
    session: aiohttp.ClientSession, method: str, url: URL, *, headers: dict[str, str]
) -> dict[str, Any]:
    try:
        async with session.request(method, url, headers=headers) as response:
            if response.status >= 400:
                raise ArtifactUnavailable(
                    f"{method} {url.path} answered {response.status}: {await _error_message(response)}"
                )
            document = await response.json()
    except aiohttp.ClientError as exc:
        raise ArtifactUnavailable(f"cannot ask the registry at {url.origin()}: {exc}") from exc
    except ValueError as exc:
        raise ArtifactUnavailable(f"{method} {url.path} answered something that is not JSON") from exc
    if not isinstance(document, dict):
        raise ArtifactUnavailable(f"{method} {url.path} did not answer a JSON object")
    return document


async def _download(session: aiohttp.ClientSession, url: URL, data_dir: Path) -> tuple[Path, str, int]:
    """Stream the signed URL (no token: the URL is the credential) to a temporary file while hashing."""
    fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=data_dir, prefix=".download-")
    staged = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            # The query holds the URL's signature: report only the path.
            async with session.get(url) as response:
                if response.status >= 400:
                    raise ArtifactUnavailable(
                        f"downloading {url.path} answered {response.status}: {await _error_message(response)}"
                    )
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
    except aiohttp.ClientError as exc:
        await asyncio.to_thread(staged.unlink, missing_ok=True)
        raise ArtifactUnavailable(f"downloading {url.path} failed: {exc}") from exc
    except BaseException:
        await asyncio.to_thread(staged.unlink, missing_ok=True)
        raise
    return staged, digest.hexdigest(), size


async def _error_message(response: aiohttp.ClientResponse) -> str:
    return error_message(await response.read(), response.status)
