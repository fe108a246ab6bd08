"""Refusing an artifact: which check failed, in words an operator can act on, never showing a key."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelserver.errors import ArtifactRejected, ArtifactUnavailable
from modelserver.verify import VersionFacts, verify_artifact
from registry.signing import keyring_from_env

KEY = "model-server-unit-key-42"
CHECKSUM = hashlib.sha256(b"weights").hexdigest()


def signed_facts(
    key: str = KEY, *, key_id: str = "legacy", model: str = "fraud", version: str = "2"
) -> VersionFacts:
    signature = hmac.new(key.encode(), f"{model}|{version}|{CHECKSUM}".encode(), hashlib.sha256).hexdigest()
    return VersionFacts(CHECKSUM, signature, key_id, "hmac-sha256")


def test_bytes_and_signature_that_match_are_accepted() -> None:
    keyring = keyring_from_env({"AEGIS_MODEL_SIGN_KEY": KEY})
    verify_artifact("fraud", "2", signed_facts(), downloaded_checksum=CHECKSUM, keyring=keyring)


def test_rotated_keys_verify_with_the_key_the_record_names() -> None:
    keyring = keyring_from_env({"AEGIS_MODEL_SIGN_KEYS": f"k2:new-secret,k1:{KEY}"})
    verify_artifact("fraud", "2", signed_facts(key_id="k1"), downloaded_checksum=CHECKSUM, keyring=keyring)


def test_ed25519_signatures_verify_with_a_public_key(tmp_path: Path) -> None:
    private = Ed25519PrivateKey.generate()
    public_file = tmp_path / "verify.pem"
    public_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    keyring = keyring_from_env({"AEGIS_MODEL_VERIFY_ED25519_KEYS": str(public_file)})
    (key_id,) = keyring.key_ids
    signature = private.sign(f"fraud|2|{CHECKSUM}".encode()).hex()
    facts = VersionFacts(CHECKSUM, signature, key_id, "ed25519")
    verify_artifact("fraud", "2", facts, downloaded_checksum=CHECKSUM, keyring=keyring)


@pytest.mark.parametrize(
    ("env", "facts", "downloaded", "message"),
    [
        (
            {"AEGIS_MODEL_SIGN_KEY": KEY}, signed_facts(), "0" * 64,
            f"checksum mismatch: registry says {CHECKSUM}, downloaded bytes hash to {'0' * 64}",
        ),
        (
            {"AEGIS_MODEL_SIGN_KEY": "another-key"}, signed_facts(), CHECKSUM,
            "signature does not verify with key 'legacy'",
        ),
        (
            {"AEGIS_MODEL_SIGN_KEY": KEY}, signed_facts(model="other-model"), CHECKSUM,
            "signature does not verify with key 'legacy'",
        ),
        (
            {"AEGIS_MODEL_SIGN_KEYS": f"k2:{KEY}"}, signed_facts(key_id="k1"), CHECKSUM,
            "no key configured to verify key id 'k1': set AEGIS_MODEL_SIGN_KEY",
        ),
        (
            {}, signed_facts(), CHECKSUM,
            "no key configured to verify key id 'legacy': set AEGIS_MODEL_SIGN_KEY",
        ),
    ],
    ids=["tampered-bytes", "wrong-key", "signed-for-another-model", "retired-key-id", "no-key"],
)
def test_a_mismatch_is_refused_saying_which_check_failed(
    env: dict[str, str], facts: VersionFacts, downloaded: str, message: str
) -> None:
    with pytest.raises(ArtifactRejected) as refused:
        verify_artifact("fraud", "2", facts, downloaded_checksum=downloaded, keyring=keyring_from_env(env))
    assert message in str(refused.value)
    for secret in (KEY, "another-key"):
        assert secret not in str(refused.value)


@pytest.mark.parametrize(
    ("document", "missing"),
    [
        ({"checksum": CHECKSUM, "key_id": "legacy", "algorithm": "hmac-sha256"}, "signature"),
        ({"checksum": "", "signature": "ab", "key_id": "legacy", "algorithm": "hmac-sha256"}, "checksum"),
        ({}, "algorithm, checksum, key_id, signature"),
    ],
)
def test_a_version_document_without_its_signed_facts_is_unusable(
    document: dict[str, Any], missing: str
) -> None:
    with pytest.raises(ArtifactUnavailable, match=f"has no {missing}"):
        VersionFacts.from_document(document)
