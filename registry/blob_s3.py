"""Blobs as objects in an S3-compatible store: `<prefix>sha256/<64 hex>`, written once, never overwritten.

`AEGIS_BLOB_STORE=s3://bucket/prefix`. The endpoint, region and credentials come the
standard AWS way (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`, or a profile), read by botocore, never by Aegis.

- **Upload.** The bytes are staged to a local temporary file while hashed (the digest
  is the key, known only at the end), then put: one PUT up to `part_bytes`, a
  multipart upload above. The bytes are hashed again as they are read for the upload
  and the object is completed only if they still hash to the digest; an upload that
  fails is aborted, so nothing partial is ever visible under a digest key.
- **Never overwritten.** A HEAD first reuses an object already stored; the PUT (or the
  multipart completion) carries `If-None-Match: *`, so of two replicas storing the
  same new digest at once, the second is refused and reuses the first's object.
- **Download** through a presigned GET (signature v4) that expires with the request
  that led to it: the bytes do not pass through Aegis.
- **Sweep.** Objects carry no lock another replica could see, so an unnamed object is
  removed only once it is older than the grace period, and then by moving it aside
  first (`<prefix>sweeping/…`), asking the database again, and putting it back if a
  row appeared meanwhile. A registrar that reused an object checks it is still there
  once its row is committed (`ensure_stored`) and puts it again if not. Between the
  two, an object a row names is never lost, whichever side runs first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from registry.blob_uploads import UploadArea
from registry.blobs import (
    BLOB_GRACE_SECONDS,
    CHUNK_BYTES,
    BlobDownload,
    BlobStoreUnavailable,
    ReferencedChecksums,
    RemoteBlob,
    StagedBlob,
    SweepReport,
)
from registry.errors import StorageUnavailable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

# Parts of a multipart upload, and the size up to which one PUT is used. S3 wants parts
# of at least 5 MiB and at most 10,000 of them: 16 MiB parts reach 156 GiB, and one
# part in memory at a time keeps an upload's footprint flat.
PART_BYTES = 16 * 1024**2
# A presigned URL outlives the redirect by this much: the client follows it at once,
# the margin covers a slow start of the transfer (S3 checks expiry when it begins).
PRESIGN_MIN_SECONDS = 60
_MISSING = ("404", "NoSuchKey", "NotFound")


class S3BlobStore:
    def __init__(
        self, bucket: str, prefix: str, *, uploads: UploadArea, part_bytes: int = PART_BYTES
    ) -> None:
        self.bucket = bucket
        # "" or "a/b/": keys are the prefix then `sha256/<digest>`.
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.uploads = uploads
        self.part_bytes = part_bytes
        self._exit = contextlib.AsyncExitStack()
        self._s3: S3Client | None = None

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key_for(self, checksum: str) -> str:
        return f"{self.prefix}sha256/{checksum}"

    def _aside_key(self, checksum: str) -> str:
        return f"{self.prefix}sweeping/sha256/{checksum}"

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            raise RuntimeError("S3BlobStore.start() was not called")
        return self._s3

    async def start(self) -> None:
        await asyncio.to_thread(self.uploads.prepare)
        # Presigned URLs with signature v4: what every S3-compatible store accepts, and
        # the only kind that carries an expiry S3 itself enforces in every region.
        config = AioConfig(signature_version="s3v4")
        self._s3 = await self._exit.enter_async_context(get_session().create_client("s3", config=config))
        endpoint = self.s3.meta.endpoint_url
        try:
            await self.s3.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise BlobStoreUnavailable(
                f"AEGIS_BLOB_STORE={self.location}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or a role)"
            ) from None
        except ClientError as exc:
            code = _error_code(exc)
            if code in _MISSING or code == "NoSuchBucket":
                problem = f"the bucket {self.bucket!r} does not exist at {endpoint}; create it first"
            elif code in ("403", "AccessDenied", "Forbidden"):
                problem = (f"access to the bucket {self.bucket!r} at {endpoint} is denied; check the "
                           "credentials (AWS_ACCESS_KEY_ID) and the bucket's policy")
            else:
                problem = f"the bucket {self.bucket!r} at {endpoint} cannot be used ({code})"
            raise BlobStoreUnavailable(f"AEGIS_BLOB_STORE={self.location}: {problem}") from None
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(
                f"AEGIS_BLOB_STORE={self.location}: cannot reach the S3 endpoint {endpoint} ({exc}); "
                "set AWS_ENDPOINT_URL for a store other than AWS"
            ) from None

    async def close(self) -> None:
        await self._exit.aclose()
        self._s3 = None

    async def stage(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> StagedBlob:
        return await self.uploads.stage(chunks, max_bytes=max_bytes)

    async def publish(self, staged: StagedBlob) -> bool:
        key = self.key_for(staged.checksum)
        async with _storage_errors("storing the artifact"):
            if await self._exists(key):
                return False
            return await self._put(staged, key)

    async def _put(self, staged: StagedBlob, key: str) -> bool:
        """Upload the staged file under `key` unless an object is there; False when one was."""
        if staged.size_bytes <= self.part_bytes:
            body = await asyncio.to_thread(_read_part, staged, 0, staged.size_bytes)
            _check_digest(hashlib.sha256(body), staged)
            try:
                await self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
            except ClientError as exc:
                if _error_code(exc) == "PreconditionFailed":
                    return False  # stored by another writer since our HEAD: the same bytes
                raise
            return True
        return await self._put_multipart(staged, key)

    async def _put_multipart(self, staged: StagedBlob, key: str) -> bool:
        started = await self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = started["UploadId"]
        try:
            digest = hashlib.sha256()
            parts = []
            for number, offset in enumerate(range(0, staged.size_bytes, self.part_bytes), start=1):
                size = min(self.part_bytes, staged.size_bytes - offset)
                body = await asyncio.to_thread(_read_part, staged, offset, size)
                await asyncio.to_thread(digest.update, body)
                part = await self.s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
                parts.append({"ETag": part["ETag"], "PartNumber": number})
            _check_digest(digest, staged)
            await self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                IfNoneMatch="*",
            )
        except ClientError as exc:
            await self._abort(key, upload_id)
            if _error_code(exc) == "PreconditionFailed":
                return False
            raise
        except BaseException:
            await self._abort(key, upload_id)
            raise
        return True

    async def _abort(self, key: str, upload_id: str) -> None:
        # An upload never completed is invisible; aborting frees its parts. Should the
        # abort fail too, the sweep aborts uploads older than the grace period.
        with contextlib.suppress(ClientError, BotoCoreError):
            await asyncio.shield(
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            )

    async def ensure_stored(self, staged: StagedBlob) -> None:
        key = self.key_for(staged.checksum)
        async with _storage_errors("checking the stored artifact"):
            if not await self._exists(key) and await self._put(staged, key):
                log.warning("artifact %s was swept while being registered; stored it again", staged.checksum)

    async def discard(self, staged: StagedBlob) -> None:
        await asyncio.to_thread(UploadArea.discard, staged)

    async def remove_unreferenced(self, checksum: str, referenced: ReferencedChecksums) -> bool:
        removed = await self._remove_aside(checksum, referenced)
        return removed is not None

    async def sweep(
        self, referenced: ReferencedChecksums, *, grace_seconds: float = BLOB_GRACE_SECONDS
    ) -> SweepReport:
        uploads, upload_bytes = await asyncio.to_thread(self.uploads.sweep)
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
        aborted = await self._abort_stale_uploads(cutoff)
        await self._settle_set_aside(referenced)
        named = await referenced()
        report = SweepReport(uploads + aborted, upload_bytes)
        for checksum, _size in await self._orphans(named, cutoff):
            size = await self._remove_aside(checksum, referenced)
            if size is not None:
                report += SweepReport(blobs=1, blob_bytes=size)
        return report

    async def _orphans(self, named: set[str], cutoff: datetime) -> list[tuple[str, int]]:
        found = []
        paginator = self.s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}sha256/"):
            for item in page.get("Contents", []):
                checksum = item["Key"].rsplit("/", 1)[-1]
                if checksum not in named and item["LastModified"] < cutoff:
                    found.append((checksum, item["Size"]))
        return found

    async def _remove_aside(self, checksum: str, referenced: ReferencedChecksums) -> int | None:
        """Move one object aside, ask the database again, then delete it or put it back.

        Returns the bytes removed, or None when the object was kept (or gone already).
        """
        key, aside = self.key_for(checksum), self._aside_key(checksum)
        try:
            head = await self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise
        await self.s3.copy_object(
            Bucket=self.bucket, Key=aside, CopySource={"Bucket": self.bucket, "Key": key}
        )
        await self.s3.delete_object(Bucket=self.bucket, Key=key)
        if checksum in await referenced():
            await self._restore(checksum)
            return None
        await self.s3.delete_object(Bucket=self.bucket, Key=aside)
        return int(head["ContentLength"])

    async def _restore(self, checksum: str) -> None:
        key, aside = self.key_for(checksum), self._aside_key(checksum)
        try:
            await self.s3.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": aside},
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if _error_code(exc) != "PreconditionFailed":
                raise
            # The registrar stored it again meanwhile (`ensure_stored`): keep theirs.
        await self.s3.delete_object(Bucket=self.bucket, Key=aside)
        log.info("blob %s gained a row while being swept: kept", checksum)

    async def _settle_set_aside(self, referenced: ReferencedChecksums) -> None:
        """Objects a sweeper killed mid-way left aside: back if a row names them, else gone."""
        named = await referenced()
        paginator = self.s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}sweeping/sha256/"):
            for item in page.get("Contents", []):
                checksum = item["Key"].rsplit("/", 1)[-1]
                if checksum in named:
                    await self._restore(checksum)
                else:
                    await self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])

    async def _abort_stale_uploads(self, cutoff: datetime) -> int:
        """Multipart uploads a killed process left open (invisible, but they cost storage)."""
        count = 0
        paginator = self.s3.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    await self._abort(upload["Key"], upload["UploadId"])
                    count += 1
        return count

    async def rehash(self, checksum: str) -> str | None:
        async with _storage_errors("reading the artifact"):
            try:
                answer = await self.s3.get_object(Bucket=self.bucket, Key=self.key_for(checksum))
            except ClientError as exc:
                if _error_code(exc) in _MISSING:
                    return None
                raise
            digest = hashlib.sha256()
            async with answer["Body"] as body:
                while chunk := await body.read(CHUNK_BYTES):
                    await asyncio.to_thread(digest.update, chunk)
            return digest.hexdigest()

    async def download(self, checksum: str, *, filename: str, expires_at: datetime) -> BlobDownload | None:
        key = self.key_for(checksum)
        async with _storage_errors("locating the artifact"):
            if not await self._exists(key):
                return None
            seconds = max(PRESIGN_MIN_SECONDS, int((expires_at - datetime.now(UTC)).total_seconds()))
            url = await self.s3.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket, "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                    "ResponseContentType": "application/octet-stream",
                },
                ExpiresIn=seconds,
            )
        return RemoteBlob(url, datetime.now(UTC) + timedelta(seconds=seconds))

    async def _exists(self, key: str) -> bool:
        try:
            await self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise
        return True


@contextlib.asynccontextmanager
async def _storage_errors(doing: str) -> AsyncIterator[None]:
    """S3 failures during a request become a 503 that says to retry (never a 500)."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        log.error("S3 failed while %s: %s", doing, exc)
        raise StorageUnavailable(
            f"the blob store failed while {doing} ({_error_code(exc) or type(exc).__name__}); "
            "nothing was changed, retry shortly"
        ) from exc


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error: Any = exc.response.get("Error", {})
        return str(error.get("Code", ""))
    return ""


def _read_part(staged: StagedBlob, offset: int, size: int) -> bytes:
    with staged.temp_path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def _check_digest(digest: Any, staged: StagedBlob) -> None:
    # The local file changed between staging and upload (disk error, another hand): the
    # object would not be what its key claims, so it is never completed.
    if digest.hexdigest() != staged.checksum:
        raise StorageUnavailable(
            "the staged artifact changed on local disk before it reached the blob store; "
            "nothing was stored, upload it again"
        )
