"""Blobs as files in a directory: `sha256/<2 hex>/<64 hex>`, written once, never overwritten.

The data directory's `blobs/` by default; with `AEGIS_BLOB_STORE=file:///path` a
directory several replicas share (a mounted volume). An upload is staged in
`uploads/` beside the blobs (same file system, so the final `os.replace` is atomic).

Crash garbage and replicas. A process killed between moving a blob into place and
committing its row leaves a blob no row names. `sweep` removes it, and must never
remove what a live process (this one, or another replica sharing the directory) is
still writing or about to name in a row. Two facts make that safe:

- Every writer holds a shared `flock` on its bytes from the first write until its
  row is committed (the lock follows the inode through the rename). The sweeper
  takes an exclusive lock without waiting and leaves anything it cannot lock.
- A blob is swept only if it is also older than a grace period (see
  `BLOB_GRACE_SECONDS`), for file systems where `flock` is not shared between hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

from registry.blob_uploads import UploadArea, lock_exclusive
from registry.blobs import (
    BLOB_GRACE_SECONDS,
    BlobDownload,
    LocalBlob,
    ReferencedChecksums,
    StagedBlob,
    SweepReport,
)

_BLOB_NAME = re.compile(r"[0-9a-f]{64}")
_SHARD_NAME = re.compile(r"[0-9a-f]{2}")


class DirectoryBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads = UploadArea(root / "uploads")

    @property
    def location(self) -> str:
        return str(self.root)

    async def start(self) -> None:
        await asyncio.to_thread(self.prepare)

    def prepare(self) -> None:
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.uploads.prepare()

    async def close(self) -> None:
        return None

    def path_for(self, checksum: str) -> Path:
        return self.root / "sha256" / checksum[:2] / checksum

    async def stage(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StagedBlob:
        return await self.uploads.stage(chunks, max_bytes=max_bytes)

    async def publish(self, staged: StagedBlob) -> bool:
        """Move a staged blob into place; returns False when the same bytes were already stored.

        Either way `staged.lock_fd` then holds a shared lock on the published blob.
        """
        return await asyncio.to_thread(self._publish, staged)

    def _publish(self, staged: StagedBlob) -> bool:
        final = self.path_for(staged.checksum)
        held = _lock_existing(final)
        if held is not None:
            # The same bytes are stored: name them (locked, and touched so that a
            # grace-only sweep sees them young) and drop our copy.
            with contextlib.suppress(OSError):  # another owner's file: the lock still holds
                os.utime(final)
            staged.temp_path.unlink(missing_ok=True)
            os.close(staged.lock_fd)
            staged.lock_fd = held
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        # Two writers of the same new bytes may both get here: the second replaces the
        # first's identical file, and each row still names bytes that are there.
        os.replace(staged.temp_path, final)
        _fsync_dir(final.parent)
        return True

    async def ensure_stored(self, staged: StagedBlob) -> None:
        # The writer's lock kept every sweeper away since the blob was published.
        return None

    async def discard(self, staged: StagedBlob) -> None:
        await asyncio.to_thread(UploadArea.discard, staged)

    async def remove_unreferenced(self, checksum: str, referenced: ReferencedChecksums) -> bool:
        report = await self._remove_blobs([self.path_for(checksum)], referenced)
        return report.blobs == 1

    async def sweep(
        self, referenced: ReferencedChecksums, *, grace_seconds: float = BLOB_GRACE_SECONDS
    ) -> SweepReport:
        uploads, upload_bytes = await asyncio.to_thread(self.uploads.sweep)
        named = await referenced()
        cutoff = time.time() - grace_seconds
        candidates = await asyncio.to_thread(self._orphan_candidates, named, cutoff)
        removed = await self._remove_blobs(candidates, referenced)
        return SweepReport(uploads, upload_bytes, removed.blobs, removed.blob_bytes)

    def _orphan_candidates(self, named: set[str], cutoff: float) -> list[Path]:
        found: list[Path] = []
        for shard in (self.root / "sha256").iterdir():
            if not _SHARD_NAME.fullmatch(shard.name) or not shard.is_dir():
                continue
            for blob in shard.iterdir():
                if not _BLOB_NAME.fullmatch(blob.name) or blob.name in named:
                    continue
                try:
                    if blob.stat().st_mtime < cutoff:
                        found.append(blob)
                except FileNotFoundError:
                    continue
        return found

    async def _remove_blobs(self, paths: list[Path], referenced: ReferencedChecksums) -> SweepReport:
        # Lock first, then ask the database: a writer holds its lock until its row is
        # committed, so any row not yet visible here belongs to a blob we could not lock.
        held = await asyncio.to_thread(_lock_all, paths)
        try:
            if not held:
                return SweepReport()
            named = await referenced()
            # Not in a worker thread: writers waiting for these locks may fill the pool,
            # and only this releases them. A few unlinks of orphans are cheap enough.
            doomed = [(path, fd) for path, fd in held if path.name not in named]
            count, size = _unlink_all(doomed)
            return SweepReport(blobs=count, blob_bytes=size)
        finally:
            _close_all([fd for _path, fd in held])

    async def rehash(self, checksum: str) -> str | None:
        return await asyncio.to_thread(_hash_file, self.path_for(checksum))

    async def download(self, checksum: str, *, filename: str, expires_at: datetime) -> BlobDownload | None:
        path = self.path_for(checksum)
        return LocalBlob(path) if await asyncio.to_thread(path.is_file) else None

    def exists(self, checksum: str) -> bool:
        return self.path_for(checksum).is_file()


def _lock_existing(path: Path) -> int | None:
    """A shared lock on the file now at `path`, or None when there is none.

    A sweeper may unlink the file between our open and our lock; then the descriptor
    names a deleted inode, so check that the path still leads to it.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a sweeper decides about this blob
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if same:
        return fd
    os.close(fd)
    return None


def _lock_all(paths: list[Path]) -> list[tuple[Path, int]]:
    held: list[tuple[Path, int]] = []
    for path in paths:
        fd = lock_exclusive(path)
        if fd is not None:
            held.append((path, fd))
    return held


def _unlink_all(doomed: list[tuple[Path, int]]) -> tuple[int, int]:
    count = size = 0
    for path, fd in doomed:
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                continue  # replaced since we locked it: not the file we decided about
            path.unlink()
        except FileNotFoundError:
            continue
        count, size = count + 1, size + os.fstat(fd).st_size
    return count, size


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


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
