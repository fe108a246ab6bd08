"""Content-addressed artifact storage: `blobs/sha256/<2 hex>/<64 hex>`, written once, never overwritten.

An upload goes to a temporary file in `blobs/uploads/` (same file system, so the
final `os.replace` is atomic) while it is hashed in the same pass. File work runs
in worker threads so the event loop never waits on the disk.

Crash garbage and replicas. A process killed mid-upload leaves its temporary file;
one killed between moving a blob into place and committing its row leaves a blob no
row names. `sweep` removes both, and must never remove what a live process (this
one, or another replica sharing the directory) is still writing or about to name in
a row. Two facts make that safe:

- Every writer holds a shared `flock` on its bytes from the first write until its
  row is committed (the lock follows the inode through the rename). The sweeper
  takes an exclusive lock without waiting and leaves anything it cannot lock. The
  kernel drops the locks of a killed process, so its garbage is free at once.
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
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from registry.errors import PayloadTooLarge

CHUNK_BYTES = 1 << 20  # 1 MiB: large enough to keep hashing near its limit, small enough for flat memory
# A blob no row names is swept only once it is older than this. A registration moves its
# blob into place (or, reusing stored bytes, touches it) and commits its row within one
# database round trip, so the window to cover is database latency, not upload length
# (the blob's mtime is the end of its upload, however long the upload took). The writer's
# lock already covers that window; this grace is the second line where `flock` does not
# reach across hosts (some network file systems), and an hour outlasts any stalled
# database transaction by far. The sweep also runs this often while the process lives.
BLOB_GRACE_SECONDS = 3600.0
# A temporary file is created as `<id>.new`, locked, then renamed `<id>.part`, so a
# sweeper never takes an upload in the instant between its creation and its lock. A
# `.new` file unlocked for this long was left by a crash in that instant.
UNNAMED_UPLOAD_GRACE_SECONDS = 60.0
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")
_SHARD_NAME = re.compile(r"[0-9a-f]{2}")

ReferencedChecksums = Callable[[], Awaitable[set[str]]]


@dataclass
class StagedBlob:
    """An upload written to a temporary file, hashed, not yet published.

    `lock_fd` holds a shared lock on the bytes (the temporary file, then the published
    blob) until `BlobStore.discard` closes it, once the version row is committed.
    """

    temp_path: Path
    checksum: str
    size_bytes: int
    lock_fd: int


@dataclass(frozen=True)
class SweepReport:
    """What a sweep removed: interrupted uploads and blobs no row names."""

    uploads: int = 0
    upload_bytes: int = 0
    blobs: int = 0
    blob_bytes: int = 0

    @property
    def files(self) -> int:
        return self.uploads + self.blobs


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads = root / "uploads"

    def prepare(self) -> None:
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)

    def path_for(self, checksum: str) -> Path:
        return self.root / "sha256" / checksum[:2] / checksum

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
        unnamed = self.uploads / f"{name}.new"
        fd = os.open(unnamed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        temp_path = self.uploads / f"{name}.part"
        os.replace(unnamed, temp_path)
        return fd, temp_path

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

    async def discard(self, staged: StagedBlob) -> None:
        """Drop the temporary file if it is still there and give up the lock on the bytes."""
        await asyncio.to_thread(self._discard, staged)

    def _discard(self, staged: StagedBlob) -> None:
        staged.temp_path.unlink(missing_ok=True)
        if staged.lock_fd >= 0:
            os.close(staged.lock_fd)
            staged.lock_fd = -1

    async def remove_unreferenced(self, checksum: str, referenced: ReferencedChecksums) -> bool:
        """Remove one blob unless a row names it or a writer holds it (no grace: we made it)."""
        report = await self._remove_blobs([self.path_for(checksum)], referenced)
        return report.blobs == 1

    async def sweep(
        self, referenced: ReferencedChecksums, *, grace_seconds: float = BLOB_GRACE_SECONDS
    ) -> SweepReport:
        """Remove interrupted uploads and blobs that no row names (older than `grace_seconds`)."""
        uploads, upload_bytes = await asyncio.to_thread(self._sweep_uploads)
        named = await referenced()
        cutoff = time.time() - grace_seconds
        candidates = await asyncio.to_thread(self._orphan_candidates, named, cutoff)
        removed = await self._remove_blobs(candidates, referenced)
        return SweepReport(uploads, upload_bytes, removed.blobs, removed.blob_bytes)

    def _sweep_uploads(self) -> tuple[int, int]:
        count = size = 0
        cutoff = time.time() - UNNAMED_UPLOAD_GRACE_SECONDS
        for leftover in self.uploads.iterdir():
            fd = _lock_exclusive(leftover)
            if fd is None:
                continue  # a live upload, here or in another replica
            try:
                stat = os.fstat(fd)
                if leftover.suffix == ".part" or stat.st_mtime < cutoff:
                    leftover.unlink(missing_ok=True)
                    count, size = count + 1, size + stat.st_size
            finally:
                os.close(fd)
        return count, size

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
        """SHA-256 of the stored bytes, or None when the blob is missing."""
        return await asyncio.to_thread(_hash_file, self.path_for(checksum))

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


def _lock_exclusive(path: Path) -> int | None:
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


def _lock_all(paths: list[Path]) -> list[tuple[Path, int]]:
    held: list[tuple[Path, int]] = []
    for path in paths:
        fd = _lock_exclusive(path)
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
