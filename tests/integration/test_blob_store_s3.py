"""The S3 blob store against a real S3-protocol server (moto's, a process): what only S3 needs.

Never overwritten, uploads that fail leave nothing under the digest, multipart above a
part's size, the sweep's grace and its put-back, and start-up errors that say what to fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane.settings import Settings, SettingsError
from registry.blob_s3 import S3BlobStore
from registry.blob_uploads import UploadArea
from registry.blobs import ReferencedChecksums, StagedBlob
from registry.errors import StorageUnavailable
from tests.integration.conftest import StartClient, sha256_hex
from tests.integration.test_blob_stores import register, validate
from tests.s3_server import PREFIX, Bucket, S3Server

PART = 5 * 1024**2  # the smallest part S3 takes: a multipart test stays small


async def chunks(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), 1 << 20):
        yield content[start:start + (1 << 20)]


def named(*answers: set[str]) -> ReferencedChecksums:
    """The database's answers, one per call (the last one repeats): rows appearing meanwhile."""
    calls = 0

    async def referenced() -> set[str]:
        nonlocal calls
        calls += 1
        return answers[min(calls, len(answers)) - 1]

    return referenced


@pytest.fixture
async def bucket(s3: S3Server, tmp_path: Path) -> Bucket:
    return Bucket(s3, s3.new_bucket(), tmp_path / "uploads")


@pytest.fixture
async def open_store(bucket: Bucket) -> AsyncIterator[Callable[[], Any]]:
    """S3 stores on one bucket (replicas), each with its own upload area; closed at the end."""
    stores: list[S3BlobStore] = []

    async def open_one() -> S3BlobStore:
        uploads = UploadArea(bucket.uploads.parent / f"uploads-{len(stores)}")
        store = S3BlobStore(bucket.name, PREFIX, uploads=uploads, part_bytes=PART)
        await store.start()
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.close()


async def stage(store: S3BlobStore, content: bytes) -> StagedBlob:
    return await store.stage(chunks(content), max_bytes=1 << 30)


async def test_an_object_already_under_the_digest_is_reused_never_written_over(
    s3: S3Server, bucket: Bucket, make_settings: Callable[..., Settings], start_client: StartClient
) -> None:
    artifact = b"the real weights" * 100
    checksum = sha256_hex(artifact)
    bucket.tamper(checksum, b"other bytes put there behind Aegis's back")
    before = bucket.s3.head_object(Bucket=bucket.name, Key=bucket.key(checksum))["ETag"]
    client = await start_client(make_settings(AEGIS_BLOB_STORE=f"s3://{bucket.name}/{PREFIX}"))
    assert (await register(client, "1", artifact)).status == 201
    assert bucket.s3.head_object(Bucket=bucket.name, Key=bucket.key(checksum))["ETag"] == before
    assert (await validate(client))["checksum_ok"] is False


async def test_two_replicas_storing_the_same_new_bytes_at_once_write_one_object(
    open_store: Callable[[], Any], bucket: Bucket
) -> None:
    stores = [await open_store(), await open_store()]
    staged = [await stage(store, b"same new bytes" * 1000) for store in stores]
    created = await asyncio.gather(*(s.publish(b) for s, b in zip(stores, staged, strict=True)))
    assert sorted(created) == [False, True]
    assert bucket.read(staged[0].checksum) == b"same new bytes" * 1000
    for store, blob in zip(stores, staged, strict=True):
        await store.discard(blob)
    assert bucket.leftovers() == []


@pytest.mark.parametrize("size", [PART // 2, 2 * PART + 12345], ids=["one-put", "multipart"])
async def test_an_upload_is_completed_only_with_the_bytes_its_digest_names(
    open_store: Callable[[], Any], bucket: Bucket, size: int
) -> None:
    store = await open_store()
    content = bytes(range(256)) * (size // 256) + b"!" * (size % 256)
    good = await stage(store, content)
    assert await store.publish(good) is True
    assert bucket.read(good.checksum) == content
    assert await store.rehash(good.checksum) == sha256_hex(content)
    await store.discard(good)
    # The staged file changes between hashing and upload (a disk error): nothing is
    # completed under the digest, and no multipart upload stays open.
    broken = await stage(store, content[::-1])
    with broken.temp_path.open("r+b") as handle:
        handle.seek(size - 1)
        handle.write(b"?")
    with pytest.raises(StorageUnavailable, match="changed on local disk"):
        await store.publish(broken)
    await store.discard(broken)
    assert bucket.digests() == [good.checksum]
    assert bucket.leftovers() == []


async def test_the_sweep_keeps_young_and_named_objects_and_puts_back_one_that_gained_a_row(
    open_store: Callable[[], Any], bucket: Bucket
) -> None:
    store = await open_store()
    staged = {}
    for label in ("named", "orphan", "gains-a-row"):
        staged[label] = await stage(store, label.encode() * 100)
        await store.publish(staged[label])
        await store.discard(staged[label])
    checksum = {label: blob.checksum for label, blob in staged.items()}
    # With the default grace (an hour) nothing this young goes, named or not.
    assert (await store.sweep(named(set()))).blobs == 0
    assert sorted(bucket.digests()) == sorted(checksum.values())
    # Past the grace: the orphan goes; the row of the third appears while it is being
    # swept (another replica committed it), so it is put back.
    rows_before = {checksum["named"]}
    rows_after = {checksum["named"], checksum["gains-a-row"]}
    report = await store.sweep(named(rows_before, rows_before, rows_after), grace_seconds=0)
    assert (report.blobs, report.blob_bytes) == (1, len(b"orphan" * 100))
    assert sorted(bucket.digests()) == sorted([checksum["named"], checksum["gains-a-row"]])
    assert bucket.read(checksum["gains-a-row"]) == b"gains-a-row" * 100
    assert bucket.leftovers() == []


async def test_a_registrar_stores_again_an_object_swept_before_its_row_was_committed(
    open_store: Callable[[], Any], bucket: Bucket
) -> None:
    store = await open_store()
    staged = await stage(store, b"reused bytes" * 100)
    await store.publish(staged)
    bucket.remove(staged.checksum)  # what a sweep that read the rows just before ours did
    await store.ensure_stored(staged)
    await store.discard(staged)
    assert bucket.read(staged.checksum) == b"reused bytes" * 100


async def test_a_missing_bucket_stops_the_start_with_what_to_do(
    s3: S3Server, make_settings: Callable[..., Settings], start_client: StartClient
) -> None:
    with pytest.raises(SettingsError, match=r"bucket 'no-such-bucket' does not exist at http://127\.0\.0\.1:\d+"):
        await start_client(make_settings(AEGIS_BLOB_STORE="s3://no-such-bucket/aegis"))


async def test_missing_credentials_stop_the_start_with_what_to_set(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch, bucket: Bucket,
    make_settings: Callable[..., Settings], start_client: StartClient,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SettingsError, match="no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        await start_client(make_settings(AEGIS_BLOB_STORE=f"s3://{bucket.name}"))
