"""Uploads in flight: temporary files in `uploads/`, hashed while written, locked while alive.

Every blob store stages an upload here first (the digest is known only at the end).
A writer holds a shared `flock` on its temporary file from the first write until it
is discarded; a sweeper takes an exclusive lock without waiting and leaves anything it
cannot lock. The kernel drops the locks of a killed process, so its leftovers are free
to sweep at once. File work runs in worker threads so the event loop never waits on
the disk.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from registry.blobs import StagedBlob
from registry.errors import PayloadTooLarge

# A temporary file is created as `<id>.new`, locked, then renamed `<id>.part`, so a
# sweeper never takes an upload in the instant between its creation and its lock. A
# `.new` file unlocked for this long was left by a crash in that instant.
UNNAMED_UPLOAD_GRACE_SECONDS = 60.0


class UploadArea:
    """The `uploads/` directory of a blob store on local (or shared) disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    async def stage(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StagedBlob:
        """Write `chunks` to a temporary file, hashing as they pass; nothing stays on failure."""
        fd, temp_path = await asyncio.to_thread(self._new_upload)
        digest = hashlib.sha256()
        size = 0
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
            temp_path.unlink(missing_ok=True)
            os.close(fd)
            raise
        return StagedBlob(temp_path, digest.hexdigest(), size, fd)

    def _new_upload(self) -> tuple[int, Path]:
        name = uuid.uuid4().hex
        unnamed = self.path / f"{name}.new"
        fd = os.open(unnamed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        temp_path = self.path / f"{name}.part"
        os.replace(unnamed, temp_path)
        return fd, temp_path

    @staticmethod
    def discard(staged: StagedBlob) -> None:
        """Drop the temporary file if it is still there and close the lock (blocking: run in a thread)."""
        staged.temp_path.unlink(missing_ok=True)
        if staged.lock_fd >= 0:
            os.close(staged.lock_fd)
            staged.lock_fd = -1

    def sweep(self) -> tuple[int, int]:
        """Remove the temporary files no live writer holds: (count, bytes). Blocking: run in a thread."""
        count = size = 0
        cutoff = time.time() - UNNAMED_UPLOAD_GRACE_SECONDS
        for leftover in self.path.iterdir():
            fd = lock_exclusive(leftover)
            if fd is None:
                continue  # a live upload, here or in another process
            try:
                stat = os.fstat(fd)
                if leftover.suffix == ".part" or stat.st_mtime < cutoff:
                    leftover.unlink(missing_ok=True)
                    count, size = count + 1, size + stat.st_size
            finally:
                os.close(fd)
        return count, size


def lock_exclusive(path: Path) -> int | None:
    """An exclusive lock taken without waiting, or None when someone holds the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _hash_and_write(digest: hashlib._Hash, fd: int, chunk: bytes) -> None:
    digest.update(chunk)
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]
