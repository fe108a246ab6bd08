"""The seed's CI flow: `aegis sign`, `aegis verify`, `aegis registry import` against a running server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from registry.importer import ImportOutcome, import_tree
from tests.conftest import SIGN_KEY, TOKENS, auth
from tests.integration.conftest import hmac_hex, sha256_hex


def aegis(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "AEGIS_MODEL_SIGN_KEY": SIGN_KEY, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=60, check=False,
    )


def make_folder(root: Path, model_name: str, version: str, data: bytes) -> Path:
    folder = root / model_name / version
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(data)
    return folder


def test_sign_writes_metadata_that_verify_accepts_and_tampering_fails(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "model_registry", "fraud", "1.0", b"onnx bytes")
    signed = aegis("sign", str(folder))
    assert signed.returncode == 0, signed.stderr
    metadata = json.loads((folder / "metadata.json").read_text())
    checksum = sha256_hex(b"onnx bytes")
    assert metadata["checksum"] == checksum
    assert metadata["signature"] == hmac_hex(SIGN_KEY, "fraud", "1.0", checksum)
    assert (metadata["model_name"], metadata["version"], metadata["key_id"], metadata["algorithm"]) == (
        "fraud", "1.0", "legacy", "hmac-sha256",
    )
    assert aegis("verify", str(folder)).returncode == 0
    (folder / "model.onnx").write_bytes(b"swapped bytes")
    tampered = aegis("verify", str(folder))
    assert tampered.returncode == 1
    assert "checksum mismatch" in tampered.stdout
    wrong_key = aegis("verify", str(folder), env={"AEGIS_MODEL_SIGN_KEY": "other"})
    assert wrong_key.returncode == 1


def test_sign_refuses_folders_that_are_not_one_artifact(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "m", "1", b"a")
    (folder / "second.bin").write_bytes(b"b")
    result = aegis("sign", str(folder))
    assert result.returncode == 2
    assert "exactly one artifact" in result.stderr
    bad_name = make_folder(tmp_path, "Bad|Name", "1", b"a")
    assert "invalid" in aegis("sign", str(bad_name)).stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_import_registers_new_folders_once_and_reports_failures(
    tmp_path: Path, client: Any
) -> None:
    root = tmp_path / "model_registry"
    for version in ("1", "2"):
        folder = make_folder(root, "fraud", version, f"weights {version}".encode())
        assert aegis("sign", str(folder)).returncode == 0
    broken = make_folder(root, "fraud", "3", b"weights 3")
    assert aegis("sign", str(broken)).returncode == 0
    (broken / "model.onnx").write_bytes(b"changed after signing")
    base_url = str(client.make_url(""))
    seen: list[ImportOutcome] = []
    first = await import_tree(root, base_url=base_url, token=TOKENS["admin"], report=seen.append)
    assert sorted((o.folder.name, o.status) for o in first) == [
        ("1", "registered"), ("2", "registered"), ("3", "failed"),
    ]
    assert "checksum mismatch" in next(o.detail for o in first if o.failed)
    again = await import_tree(root, base_url=base_url, token=TOKENS["admin"], report=seen.append)
    assert sorted(o.status for o in again) == ["already_registered", "already_registered", "failed"]
    model = await (await client.get("/v1/registry/fraud", headers=auth("viewer"))).json()
    assert [v["version"] for v in model["versions"]] == ["1", "2"]
    assert model["versions"][0]["created_by"] == "admin"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_import_watch_registers_folders_that_appear_later(tmp_path: Path, client: Any) -> None:
    root = tmp_path / "model_registry"
    root.mkdir()
    stop = asyncio.Event()
    seen: list[ImportOutcome] = []
    watcher = asyncio.create_task(
        import_tree(
            root, base_url=str(client.make_url("")), token=TOKENS["admin"], report=seen.append,
            watch=True, poll_seconds=0.1, stop=stop,
        )
    )
    folder = make_folder(root, "late", "1", b"late bytes")
    assert (await asyncio.to_thread(aegis, "sign", str(folder))).returncode == 0
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(watcher, timeout=10)
    assert [(o.folder.name, o.status) for o in seen] == [("1", "registered")]


def test_import_cli_exit_code_when_the_server_is_down(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "model_registry", "m", "1", b"x")
    assert aegis("sign", str(folder)).returncode == 0
    result = aegis(
        "registry", "import", str(tmp_path / "model_registry"),
        env={"AEGIS_URL": "http://127.0.0.1:9", "AEGIS_TOKEN": "t"},
    )
    assert result.returncode == 1
    assert "cannot reach the registry" in result.stdout
