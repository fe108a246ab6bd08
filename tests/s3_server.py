"""An S3-protocol server for tests: moto's standalone server as a process on a free port.

Started by the tests, stopped by its PID. Each test makes a bucket of its own, so one
server serves a whole session.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

from tests.processes import free_port, stop, wait_for_http

# Where the tests' blobs go in their bucket: a prefix, as an operator would give one.
PREFIX = "aegis/blobs"
# moto accepts any credentials; these only have to be present and the same everywhere.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "aegis-test-key",
    "AWS_SECRET_ACCESS_KEY": "aegis-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Without credentials botocore would ask the EC2 metadata address: never from a test.
    "AWS_EC2_METADATA_DISABLED": "true",
}


def moto_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "moto_server"
    found = str(beside_python) if beside_python.exists() else shutil.which("moto_server")
    if found is None:
        raise RuntimeError('moto_server is not installed: pip install "moto[server]"')
    return found


class S3Server:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def environment(self) -> dict[str, str]:
        """What a client (Aegis, boto3) needs to reach this server the standard AWS way."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> S3Server:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [moto_server_binary(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for_http(f"{self.endpoint}/moto-api/", process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    @functools.cached_property
    def s3(self) -> Any:
        """A plain boto3 client, for the test's own look behind Aegis's back."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(signature_version="s3v4"),
        )

    def new_bucket(self) -> str:
        name = f"aegis-test-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        return name


@dataclass
class Bucket:
    server: S3Server
    name: str
    uploads: Path

    @property
    def s3(self) -> Any:
        return self.server.s3

    def key(self, checksum: str) -> str:
        return f"{PREFIX}/sha256/{checksum}"

    def keys(self) -> list[str]:
        answer = self.s3.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in answer.get("Contents", []))

    def digests(self) -> list[str]:
        keys = self.keys()
        assert all(k.startswith(f"{PREFIX}/sha256/") for k in keys), keys
        return [k.rsplit("/", 1)[-1] for k in keys]

    def read(self, checksum: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.name, Key=self.key(checksum))["Body"].read())

    def tamper(self, checksum: str, content: bytes) -> None:
        self.s3.put_object(Bucket=self.name, Key=self.key(checksum), Body=content)

    def remove(self, checksum: str) -> None:
        self.s3.delete_object(Bucket=self.name, Key=self.key(checksum))

    def leftovers(self) -> list[str]:
        open_uploads = self.s3.list_multipart_uploads(Bucket=self.name).get("Uploads", [])
        aside = [k for k in self.keys() if not k.startswith(f"{PREFIX}/sha256/")]
        local = sorted(p.name for p in self.uploads.iterdir()) if self.uploads.exists() else []
        return [*local, *(u["Key"] for u in open_uploads), *aside]
