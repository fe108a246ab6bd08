"""Where artifact bytes live: the blob store interface the registry service and API use.

A blob is named by the SHA-256 of its bytes and written once. Backends, one module
each: `blob_directory` (the data directory, or a shared directory with
`AEGIS_BLOB_STORE=file:///path`) and `blob_s3` (`s3://bucket/prefix`, any
S3-compatible store). An upload is staged to a local temporary file while it is
hashed (`blob_uploads`), then published under its digest.

Crash garbage: a process killed between publishing a blob and committing its row
leaves a blob no row names. `sweep` removes such blobs once they are older than
`BLOB_GRACE_SECONDS`, and never one whose row another replica is about to commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

CHUNK_BYTES = 1 << 20  # 1 MiB: large enough to keep hashing near its limit, small enough for flat memory
# A blob no row names is swept only once it is older than this. A registration publishes
# its blob (or, reusing stored bytes, renews it) and commits its row within one database
# round trip, so the window to cover is database latency, not upload length. Where a
# writer's lock cannot reach (another host, an object store) this grace is what keeps
# another replica's blob whose row is not committed yet; an hour outlasts any stalled
# database transaction by far. The sweep also runs this often while the process lives.
BLOB_GRACE_SECONDS = 3600.0

ReferencedChecksums = Callable[[], Awaitable[set[str]]]


class BlobStoreUnavailable(Exception):
    """The blob store cannot be used (no such bucket, no credentials); the message says what to fix."""


@dataclass
class StagedBlob:
    """An upload written to a local temporary file, hashed, not yet (or just) published.

    `lock_fd` holds a shared lock on the local bytes (the temporary file, then, in a
    directory store, the published blob) until `BlobStore.discard` closes it, once the
    version row is committed.
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

    def __add__(self, other: SweepReport) -> SweepReport:
        return SweepReport(
            self.uploads + other.uploads, self.upload_bytes + other.upload_bytes,
            self.blobs + other.blobs, self.blob_bytes + other.blob_bytes,
        )


@dataclass(frozen=True)
class LocalBlob:
    """Stored bytes this process serves itself."""

    path: Path


@dataclass(frozen=True)
class RemoteBlob:
    """Stored bytes a client fetches from the store itself, through a URL valid until `expires_at`."""

    url: str
    expires_at: datetime


BlobDownload = LocalBlob | RemoteBlob


class BlobStore(Protocol):
    """Content-addressed, write-once artifact storage."""

    @property
    def location(self) -> str:
        """Where the blobs are, for the start-up log (never a credential)."""
        ...

    async def start(self) -> None:
        """Create what is missing and check that the store can be used; BlobStoreUnavailable if not."""
        ...

    async def close(self) -> None: ...

    async def stage(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StagedBlob:
        """Write `chunks` to a temporary file, hashing as they pass; nothing stays on failure."""
        ...

    async def publish(self, staged: StagedBlob) -> bool:
        """Store the staged bytes under their digest; False when the same digest was already stored.

        Never writes over a stored blob, and on failure leaves nothing under the digest.
        """
        ...

    async def ensure_stored(self, staged: StagedBlob) -> None:
        """Called once a row names the staged blob: make sure the bytes are still there."""
        ...

    async def discard(self, staged: StagedBlob) -> None:
        """Drop the temporary file if it is still there and give up the lock on the bytes."""
        ...

    async def remove_unreferenced(self, checksum: str, referenced: ReferencedChecksums) -> bool:
        """Remove one blob we just published unless a row names it (no grace: we made it)."""
        ...

    async def sweep(
        self, referenced: ReferencedChecksums, *, grace_seconds: float = BLOB_GRACE_SECONDS
    ) -> SweepReport:
        """Remove interrupted uploads and blobs that no row names (older than `grace_seconds`)."""
        ...

    async def rehash(self, checksum: str) -> str | None:
        """SHA-256 of the stored bytes, or None when the blob is missing."""
        ...

    async def download(self, checksum: str, *, filename: str, expires_at: datetime) -> BlobDownload | None:
        """How a client gets the bytes (a URL valid until `expires_at` at most); None when missing."""
        ...
