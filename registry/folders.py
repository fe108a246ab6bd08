"""Version folders of a `model_registry/<model>/<version>/` tree: one artifact plus `metadata.json`.

`aegis sign` writes the metadata, `aegis verify` checks a folder against it; both run
in CI with nothing but the key, before anything reaches a server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.domain import check_checksum, check_model_name, check_version
from registry.errors import RegistryError
from registry.signing import Keyring

METADATA_FILE = "metadata.json"


class FolderError(Exception):
    """A version folder is not usable; the message names the folder and the fix."""


@dataclass(frozen=True)
class VersionFolder:
    path: Path
    model_name: str
    version: str
    artifact: Path

    @classmethod
    def open(cls, path: Path) -> VersionFolder:
        """Read the layout `<model>/<version>/<one artifact file>` (metadata.json aside)."""
        path = path.resolve()
        if not path.is_dir():
            raise FolderError(f"{path} is not a folder; give model_registry/<model>/<version>/")
        try:
            model_name = check_model_name(path.parent.name)
            version = check_version(path.name)
        except RegistryError as exc:
            raise FolderError(f"{path}: {exc.message}") from exc
        files = sorted(
            p for p in path.iterdir()
            if p.name != METADATA_FILE and not p.name.startswith(".")
        )
        if len(files) != 1 or not files[0].is_file():
            names = ", ".join(p.name for p in files) or "nothing"
            raise FolderError(
                f"{path} must hold exactly one artifact file besides {METADATA_FILE}; found {names}"
            )
        return cls(path, model_name, version, files[0])

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_FILE

    def read_metadata(self) -> dict[str, Any]:
        try:
            document = json.loads(self.metadata_path.read_text())
        except FileNotFoundError:
            raise FolderError(f"{self.path} has no {METADATA_FILE}; run `aegis sign` first") from None
        except json.JSONDecodeError as exc:
            raise FolderError(f"{self.metadata_path} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise FolderError(f"{self.metadata_path} must hold a JSON object")
        return document


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sign_folder(folder: VersionFolder, keyring: Keyring) -> dict[str, Any]:
    """Hash the artifact, sign its facts and write metadata.json; returns what was written."""
    checksum = sha256_file(folder.artifact)
    signature = keyring.sign(folder.model_name, folder.version, checksum)
    previous: dict[str, Any] = {}
    if folder.metadata_path.exists():
        previous = folder.read_metadata().get("metadata", {}) or {}
    document = {
        "model_name": folder.model_name,
        "version": folder.version,
        "artifact": folder.artifact.name,
        "size_bytes": folder.artifact.stat().st_size,
        "checksum": checksum,
        "signature": signature.signature,
        "key_id": signature.key_id,
        "algorithm": signature.algorithm.value,
        "metadata": previous,
    }
    temp = folder.metadata_path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(document, indent=2) + "\n")
    temp.replace(folder.metadata_path)
    return document


def verify_folder(folder: VersionFolder, keyring: Keyring | None) -> list[str]:
    """Problems found when checking a folder against its metadata.json; empty when it matches.

    Without a keyring (no key in this environment) the signature cannot be checked
    and only the checksum and the names are.
    """
    document = folder.read_metadata()
    problems: list[str] = []
    for name, expected in (("model_name", folder.model_name), ("version", folder.version)):
        if document.get(name) != expected:
            problems.append(f"{name} is {document.get(name)!r} but the folder says {expected!r}")
    claimed = document.get("checksum")
    try:
        check_checksum(claimed)
    except RegistryError as exc:
        return [*problems, exc.message]
    actual = sha256_file(folder.artifact)
    if not hmac.compare_digest(str(claimed), actual):
        problems.append(f"checksum mismatch: metadata says {claimed}, the artifact hashes to {actual}")
    if keyring is not None:
        key_id = str(document.get("key_id", ""))
        if not keyring.knows(key_id):
            problems.append(f"key id {key_id!r} is not among the configured keys")
        elif not keyring.verify(
            folder.model_name, folder.version, str(claimed),
            signature=str(document.get("signature", "")), key_id=key_id,
        ):
            problems.append(f"signature does not verify with key {key_id!r}")
    return problems


def find_version_folders(root: Path) -> list[Path]:
    """Every `<model>/<version>/` folder under root that has a metadata.json."""
    return sorted(p.parent for p in root.glob(f"*/*/{METADATA_FILE}"))
