"""`AEGIS_BLOB_STORE`: which blob store backend, parsed once at start-up, then opened.

Unset: `blobs/` in the data directory. `file:///path`: a directory several replicas
share (a mounted volume). `s3://bucket/prefix`: an S3-compatible object store.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from registry.blob_directory import DirectoryBlobStore
from registry.blob_uploads import UploadArea
from registry.blobs import BlobStore

# S3's rules for bucket names (MinIO and Ceph follow them): 3 to 63 lowercase letters,
# digits, dots and hyphens, starting and ending with a letter or a digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class DataDirBlobs:
    """Blobs under the data directory (one replica, or replicas sharing that directory)."""


@dataclass(frozen=True)
class SharedDirectoryBlobs:
    path: Path


@dataclass(frozen=True)
class S3Blobs:
    bucket: str
    prefix: str = ""


BlobStoreTarget = DataDirBlobs | SharedDirectoryBlobs | S3Blobs


def parse_blob_store(text: str) -> BlobStoreTarget:
    """The backend `text` names (pure); ValueError with what to write instead."""
    text = text.strip()
    if not text:
        return DataDirBlobs()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(
                f"AEGIS_BLOB_STORE={text!r}: a file URL takes an absolute path, with three "
                "slashes: file:///var/lib/aegis/blobs"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"AEGIS_BLOB_STORE={text!r}: a file URL takes no '?' or '#' part")
        return SharedDirectoryBlobs(Path(urllib.parse.unquote(parts.path)))
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise ValueError(
                f"AEGIS_BLOB_STORE={text!r} names no bucket: write s3://BUCKET or s3://BUCKET/PREFIX"
            )
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ValueError(
                f"AEGIS_BLOB_STORE={text!r}: {bucket!r} is not a valid bucket name (3 to 63 "
                "lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit)"
            )
        if parts.query or parts.fragment:
            raise ValueError(
                f"AEGIS_BLOB_STORE={text!r}: an s3 URL takes no '?' or '#' part; the endpoint and "
                "region come from AWS_ENDPOINT_URL and AWS_REGION"
            )
        return S3Blobs(bucket, urllib.parse.unquote(parts.path).strip("/"))
    raise ValueError(
        f"AEGIS_BLOB_STORE={text!r}: unknown scheme {parts.scheme or '(none)'!r}; use file:///path "
        "for a shared directory, s3://bucket/prefix for an S3-compatible store, or leave it unset "
        "for the data directory"
    )


def open_blob_store(target: BlobStoreTarget, *, data_dir: Path) -> BlobStore:
    """The store `target` names; call `start()` on it before use."""
    if isinstance(target, SharedDirectoryBlobs):
        return DirectoryBlobStore(target.path)
    if isinstance(target, S3Blobs):
        # Imported here: botocore costs start-up time that the other backends need not pay.
        from registry.blob_s3 import S3BlobStore

        # Uploads are staged on this replica's own disk until they are put.
        return S3BlobStore(target.bucket, target.prefix, uploads=UploadArea(data_dir / "blobs" / "uploads"))
    return DirectoryBlobStore(data_dir / "blobs")
