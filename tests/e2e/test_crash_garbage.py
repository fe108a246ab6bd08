"""`kill -9` of `aegis serve` mid-upload leaves no garbage after a restart, and never costs a stored version.

Real processes on a real socket: a 200 MiB upload streamed from a generator (never held
in memory) is cut by SIGKILL; the restarted process sweeps the temporary file and any blob
no version names, and keeps what a live upload (another replica sharing the directory)
is still writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_TOKENS, SIGN_KEY, TOKENS
from tests.processes import AegisServer

MiB = 1 << 20
UPLOAD_BYTES = 200 * MiB
BOUNDARY = "aegis-crash-test-boundary"
OLD = time.time() - 7 * 24 * 3600  # far past any grace period


class StreamedUpload:
    """A multipart registration written to a raw socket chunk by chunk from a generator."""

    def __init__(self, port: int, model_name: str, version: str, size: int) -> None:
        self.port = port
        self.size = size
        self.metadata = json.dumps({"model_name": model_name, "version": version})
        self.digest = hashlib.sha256()
        self.sent = 0
        self.answer: bytes = b""
        self.error: BaseException | None = None
        self.gate = threading.Event()  # cleared: the sender stops at `pause_at` bytes
        self.gate.set()
        self.pause_at = size + 1
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, *, pause_at: int | None = None) -> StreamedUpload:
        if pause_at is not None:
            self.pause_at = pause_at
            self.gate.clear()
        self.thread.start()
        return self

    def chunks(self) -> Iterator[bytes]:
        for index in range(self.size // MiB):
            chunk = index.to_bytes(8, "big") * (MiB // 8)
            self.digest.update(chunk)
            yield chunk

    def _run(self) -> None:
        head = (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n"
            f"Content-Type: application/json\r\n\r\n{self.metadata}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"m.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        request = (
            f"POST /v1/registry/register HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {TOKENS['admin']}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(head) + self.size + len(tail)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=120) as sock:
                sock.sendall(request + head)
                for chunk in self.chunks():
                    if self.sent >= self.pause_at:
                        self.gate.wait()
                    sock.sendall(chunk)
                    self.sent += len(chunk)
                sock.sendall(tail)
                while data := sock.recv(65536):
                    self.answer += data
        except OSError as exc:
            self.error = exc

    def result(self) -> tuple[int, dict[str, Any]]:
        self.thread.join(timeout=300)
        assert self.error is None, self.error
        head, _, body = self.answer.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        return status, json.loads(body)


def start_server(data_dir: Path, port: int | None = None, *, blob_store: str = "") -> AegisServer:
    env = {
        "AEGIS_DATA_DIR": str(data_dir),
        "AEGIS_API_TOKENS": API_TOKENS,
        "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
        "AEGIS_XDS_VALIDATE": "false",
    }
    if blob_store:
        env["AEGIS_BLOB_STORE"] = blob_store
    return AegisServer(env, port=port).start()


def call(server: AegisServer, path: str) -> Any:
    headers = {"Authorization": f"Bearer {TOKENS['admin']}"}
    request = urllib.request.Request(server.url + path, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def metric(server: AegisServer, name: str, kind: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^{name}{{kind="{kind}"}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"{name}{{kind={kind!r}}} is not exported"
    return float(found.group(1))


def temp_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "blobs" / "uploads").iterdir())


def wait_until_written(data_dir: Path, at_least: int) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = temp_files(data_dir)
        if files and files[0].stat().st_size >= at_least:
            return files[0]
        time.sleep(0.05)
    raise AssertionError(f"no upload reached {at_least} bytes on disk: {temp_files(data_dir)}")


def orphan_blob(data_dir: Path, content: bytes, *, mtime: float) -> Path:
    """Bytes moved into place whose row was never committed (the process died in between)."""
    checksum = hashlib.sha256(content).hexdigest()
    path = data_dir / "blobs" / "sha256" / checksum[:2] / checksum
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_a_restart_after_kill_9_mid_upload_sweeps_the_garbage_and_keeps_every_version(data_dir: Path) -> None:
    server = start_server(data_dir)
    try:
        small = StreamedUpload(server.port, "kept", "1", 4 * MiB).start()
        assert small.result()[0] == 201
        large = StreamedUpload(server.port, "kept", "2", 16 * MiB).start()
        assert large.result()[0] == 201
        kept_blobs = sorted((data_dir / "blobs" / "sha256").rglob("*/*"))
        for blob in kept_blobs:  # old enough for any sweep: only their rows keep them
            os.utime(blob, (OLD, OLD))

        # The sender stalls at 100 MiB so the kill surely lands mid-upload.
        cut = StreamedUpload(server.port, "cut", "1", UPLOAD_BYTES).start(pause_at=100 * MiB)
        partial = wait_until_written(data_dir, 64 * MiB)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
        server.log_file.close()
        cut.gate.set()
        cut.thread.join(timeout=60)
        assert partial.exists() and partial.stat().st_size >= 64 * MiB  # what the crash left
    finally:
        server.stop()
    # The other half of a crash: bytes moved into place, the process killed before their row.
    stale_orphan = orphan_blob(data_dir, b"published, never named" * 4096, mtime=OLD)
    # Young bytes no row names yet may be a live replica's registration about to commit.
    young_orphan = orphan_blob(data_dir, b"a replica is committing its row" * 4096, mtime=time.time())

    restarted = start_server(data_dir)
    try:
        assert temp_files(data_dir) == []
        assert not stale_orphan.exists()
        assert young_orphan.exists()
        assert sorted((data_dir / "blobs" / "sha256").rglob("*/*")) == sorted([*kept_blobs, young_orphan])
        for version in ("1", "2"):
            assert call(restarted, f"/v1/registry/kept/{version}/validate")["valid"] is True
        assert metric(restarted, "aegis_registry_swept_files_total", "upload") == 1
        assert metric(restarted, "aegis_registry_swept_bytes_total", "upload") >= 64 * MiB
        assert metric(restarted, "aegis_registry_swept_files_total", "blob") == 1
        log = (data_dir / "aegis.log").read_text()
        assert "swept crash garbage from the blob store: 1 interrupted upload(s)" in log

        # The interrupted model registers in full now, and nothing else is left over.
        retry = StreamedUpload(restarted.port, "cut", "1", UPLOAD_BYTES).start()
        status, document = retry.result()
        assert status == 201
        assert document["checksum"] == retry.digest.hexdigest()
        assert call(restarted, "/v1/registry/cut/1/validate")["valid"] is True
        assert temp_files(data_dir) == []
    finally:
        restarted.stop()


def test_a_starting_replica_keeps_the_upload_another_process_is_writing(data_dir: Path) -> None:
    writer = start_server(data_dir)
    try:
        upload = StreamedUpload(writer.port, "shared", "1", UPLOAD_BYTES).start(pause_at=32 * MiB)
        in_progress = wait_until_written(data_dir, 16 * MiB)  # the reader holds back a chunk or two
        # A second process on the same blob directory (shared as AEGIS_BLOB_STORE=file://; a
        # second process on one SQLite file refuses to start) starts and sweeps while the upload stalls.
        replica = start_server(data_dir.parent / "replica", blob_store=(data_dir / "blobs").as_uri())
        try:
            assert in_progress.exists()
            assert metric(replica, "aegis_registry_swept_files_total", "upload") == 0
        finally:
            replica.stop()
        upload.gate.set()
        status, document = upload.result()
        assert status == 201
        assert document["checksum"] == upload.digest.hexdigest()
        assert call(writer, "/v1/registry/shared/1/validate")["valid"] is True
    finally:
        writer.stop()
