"""The blob store's sweep on real files: it removes only what no live writer holds and no row names."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry.blob_directory import DirectoryBlobStore
from registry.blobs import ReferencedChecksums, StagedBlob

OLD = time.time() - 7 * 24 * 3600


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.fixture
def blobs(tmp_path: Path) -> DirectoryBlobStore:
    store = DirectoryBlobStore(tmp_path / "blobs")
    store.prepare()
    return store


def named(*checksums: str) -> ReferencedChecksums:
    async def referenced() -> set[str]:
        return set(checksums)

    return referenced


async def stage(blobs: DirectoryBlobStore, content: bytes) -> StagedBlob:
    return await blobs.stage(chunks(content), max_bytes=1 << 30)


async def test_a_published_blob_is_kept_while_its_writer_commits_its_row_even_with_no_grace(
    blobs: DirectoryBlobStore,
) -> None:
    staged = await stage(blobs, b"being registered")
    assert await blobs.publish(staged) is True
    os.utime(blobs.path_for(staged.checksum), (OLD, OLD))
    report = await blobs.sweep(named(), grace_seconds=0)
    assert (report.uploads, report.blobs) == (0, 0)
    assert blobs.exists(staged.checksum)
    await blobs.discard(staged)  # the writer gave up (its row never came): now it is garbage
    report = await blobs.sweep(named(), grace_seconds=0)
    assert (report.blobs, report.blob_bytes) == (1, len(b"being registered"))
    assert not blobs.exists(staged.checksum)


async def test_a_staged_upload_is_kept_and_an_abandoned_one_removed(blobs: DirectoryBlobStore) -> None:
    live = await stage(blobs, b"x" * 1000)
    abandoned = blobs.uploads.path / "0123abcd.part"
    abandoned.write_bytes(b"y" * 500)
    report = await blobs.sweep(named())
    assert (report.uploads, report.upload_bytes) == (1, 500)
    assert sorted(blobs.uploads.path.iterdir()) == [live.temp_path]
    await blobs.discard(live)
    assert list(blobs.uploads.path.iterdir()) == []


async def test_reused_bytes_are_locked_and_touched_so_no_sweep_takes_them_before_the_row(
    blobs: DirectoryBlobStore,
) -> None:
    first = await stage(blobs, b"shared bytes")
    await blobs.publish(first)
    await blobs.discard(first)
    path = blobs.path_for(first.checksum)
    os.utime(path, (OLD, OLD))  # an old orphan, say, that a new registration names again
    second = await stage(blobs, b"shared bytes")
    assert await blobs.publish(second) is False
    assert path.stat().st_mtime > time.time() - 60
    assert (await blobs.sweep(named(), grace_seconds=0)).blobs == 0
    await blobs.discard(second)
    assert list(blobs.uploads.path.iterdir()) == []


async def test_only_unnamed_blobs_older_than_the_grace_go(blobs: DirectoryBlobStore) -> None:
    paths = {}
    for label, mtime in (("named-old", OLD), ("unnamed-old", OLD), ("unnamed-young", time.time())):
        checksum = hashlib.sha256(label.encode()).hexdigest()
        path = blobs.path_for(checksum)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(label.encode())
        os.utime(path, (mtime, mtime))
        paths[label] = path
    stray = blobs.root / "sha256" / "README"
    stray.write_text("not a blob")
    report = await blobs.sweep(named(paths["named-old"].name), grace_seconds=3600)
    assert report.blobs == 1
    assert {label for label, path in paths.items() if path.exists()} == {"named-old", "unnamed-young"}
    assert stray.exists()
