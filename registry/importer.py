"""`aegis registry import`: registers signed version folders through the HTTP API.

Each folder's metadata.json is sent as the claim (checksum, signature, key id), so the
server re-checks what CI signed; folders already registered are skipped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from registry.errors import error_message
from registry.folders import METADATA_FILE, FolderError, VersionFolder, find_version_folders


@dataclass(frozen=True)
class ImportOutcome:
    folder: Path
    status: str  # registered | already_registered | failed
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "failed"


class RegistryClient:
    """The few registry calls the importer needs, over one HTTP session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def version_checksum(self, model_name: str, version: str) -> str | None:
        url = f"{self.base_url}/v1/registry/{model_name}/{version}"
        async with self.session.get(url, headers=self.headers) as response:
            if response.status == 404:
                return None
            await _raise_for_error(response)
            document = await response.json()
            return str(document["checksum"])

    async def register(self, folder: VersionFolder, metadata: dict[str, object]) -> int:
        claim = {
            key: metadata[key]
            for key in ("model_name", "version", "checksum", "signature", "key_id", "metadata")
            if key in metadata
        }
        with folder.artifact.open("rb") as artifact:
            form = aiohttp.FormData()
            form.add_field("metadata", json.dumps(claim), content_type="application/json")
            form.add_field(
                "artifact", artifact, filename=folder.artifact.name,
                content_type="application/octet-stream",
            )
            url = f"{self.base_url}/v1/registry/register"
            async with self.session.post(url, data=form, headers=self.headers) as response:
                await _raise_for_error(response)
                return response.status


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


async def _raise_for_error(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    raise ApiError(response.status, error_message(await response.read(), response.status))


async def import_folder(client: RegistryClient, path: Path) -> ImportOutcome:
    try:
        folder = VersionFolder.open(path)
        metadata = folder.read_metadata()
        registered = await client.version_checksum(folder.model_name, folder.version)
        if registered is not None:
            if registered == metadata.get("checksum"):
                return ImportOutcome(path, "already_registered", registered)
            return ImportOutcome(
                path, "failed",
                f"{folder.model_name} {folder.version} is registered with checksum {registered}, "
                "not this artifact's; give the new bytes a new version",
            )
        status = await client.register(folder, metadata)
        state = "registered" if status == 201 else "already_registered"
        return ImportOutcome(path, state, str(metadata.get("checksum")))
    except (FolderError, ApiError) as exc:
        return ImportOutcome(path, "failed", str(exc))
    except aiohttp.ClientError as exc:
        return ImportOutcome(path, "failed", f"cannot reach the registry: {exc}")


async def import_tree(
    root: Path,
    *,
    base_url: str,
    token: str,
    report: Callable[[ImportOutcome], None],
    watch: bool = False,
    poll_seconds: float = 2.0,
    stop: asyncio.Event | None = None,
) -> list[ImportOutcome]:
    """Import every signed folder under root; with `watch`, keep importing new ones until stopped."""
    outcomes: list[ImportOutcome] = []
    # A folder is tried again only when its metadata.json changes, so a broken
    # folder is reported once, not on every poll.
    attempted: dict[Path, float] = {}
    stop = stop or asyncio.Event()
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session, base_url, token)
        while True:
            stamps = await asyncio.to_thread(_metadata_stamps, root)
            for path, stamp in stamps.items():
                if attempted.get(path) == stamp:
                    continue
                outcome = await import_folder(client, path)
                report(outcome)
                outcomes.append(outcome)
                attempted[path] = stamp
            if not watch:
                return outcomes
            try:
                await asyncio.wait_for(stop.wait(), timeout=poll_seconds)
                return outcomes
            except TimeoutError:
                continue


def _metadata_stamps(root: Path) -> dict[Path, float]:
    stamps: dict[Path, float] = {}
    for path in find_version_folders(root):
        try:
            stamps[path] = (path / METADATA_FILE).stat().st_mtime
        except FileNotFoundError:
            continue
    return stamps
