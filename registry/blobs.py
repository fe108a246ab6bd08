"""Content-addressed artifact storage: `blobs/sha256/<2 hex>/<64 hex>`, written once, never overwritten.

An upload goes to a temporary file in `blobs/uploads/` (same file system, so the
final `os.replace` is atomic) while it is hashed in the same pass. File work runs
in worker threads so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from registry.errors import PayloadTooLarge

CHUNK_BYTES = 1 << 20  # 1 MiB: large enough to keep hashing near its limit, small enough for flat memory
STALE_UPLOAD_SECONDS = 3600  # an upload untouched this long was interrupted


@dataclass(frozen=True)
class StagedBlob:
    """An upload written to a temporary file, hashed, not yet published."""

    temp_path: Path
    checksum: str
    size_bytes: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads = root / "uploads"

    def prepare(self) -> None:
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        # Uploads interrupted by a crash are garbage: no row can point at them. Only old
        # ones go, since another replica may share this directory and be mid-upload.
        cutoff = time.time() - STALE_UPLOAD_SECONDS
        for leftover in self.uploads.iterdir():
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink(missing_ok=True)

    def path_for(self, checksum: str) -> Path:
        return self.root / "sha256" / checksum[:2] / checksum

    async def stage(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StagedBlob:
        """Write `chunks` to a temporary file, hashing as they pass; nothing stays on failure."""
        temp_path = self.uploads / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        fd = await asyncio.to_thread(os.open, temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        loop = asyncio.get_running_loop()
        writing: asyncio.Future[None] | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"artifact is larger than the limit of {max_bytes} bytes "
                        "(AEGIS_MAX_ARTIFACT_BYTES); raise the limit or upload a smaller file"
                    )
                # Pipelined: a worker hashes and writes chunk N (hashlib and write release
                # the GIL) while the loop parses chunk N+1 off the socket.
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(None, _hash_and_write, digest, fd, chunk)
            if writing is not None:
                await writing
            await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            if writing is not None:
                await asyncio.gather(writing, return_exceptions=True)
            os.close(fd)
            temp_path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return StagedBlob(temp_path, digest.hexdigest(), size)

    async def publish(self, staged: StagedBlob) -> bool:
        """Move a staged blob into place; returns False when the same bytes were already stored."""
        return await asyncio.to_thread(self._publish, staged)

    def _publish(self, staged: StagedBlob) -> bool:
        final = self.path_for(staged.checksum)
        if final.exists():
            staged.temp_path.unlink(missing_ok=True)
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.temp_path, final)
        _fsync_dir(final.parent)
        return True

    async def discard(self, staged: StagedBlob) -> None:
        await asyncio.to_thread(staged.temp_path.unlink, missing_ok=True)

    async def remove(self, checksum: str) -> None:
        await asyncio.to_thread(self.path_for(checksum).unlink, missing_ok=True)

    async def rehash(self, checksum: str) -> str | None:
        """SHA-256 of the stored bytes, or None when the blob is missing."""
        return await asyncio.to_thread(_hash_file, self.path_for(checksum))

    def exists(self, checksum: str) -> bool:
        return self.path_for(checksum).is_file()



def _hash_and_write(digest: hashlib._Hash, fd: int, chunk: bytes) -> None:
    digest.update(chunk)
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return None
