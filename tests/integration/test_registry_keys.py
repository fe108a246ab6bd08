"""Key rotation and the Ed25519 option, through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import auth
from tests.integration.conftest import hmac_hex, sha256_hex, upload_form


async def post_version(client: Any, model_name: str, version: str, data: bytes, **claims: Any) -> Any:
    form = upload_form({"model_name": model_name, "version": version, **claims}, data)
    return await client.post("/v1/registry/register", data=form, headers=auth("admin"))


async def validity(client: Any, model_name: str, version: str) -> Any:
    response = await client.get(f"/v1/registry/{model_name}/{version}/validate", headers=auth("viewer"))
    return await response.json()


async def test_rotation_signs_with_the_first_key_and_retired_keys_still_validate(
    make_settings: Any, database_url: str, start_client: Any
) -> None:
    before = make_settings(database_url, AEGIS_MODEL_SIGN_KEYS="k1:secret-one", AEGIS_MODEL_SIGN_KEY="")
    client = await start_client(before)
    old = await (await post_version(client, "m", "1", b"v1")).json()
    assert old["key_id"] == "k1"
    assert old["signature"] == hmac_hex("secret-one", "m", "1", sha256_hex(b"v1"))
    await client.close()

    rotated = make_settings(
        database_url, AEGIS_MODEL_SIGN_KEYS="k2:secret-two,k1:secret-one", AEGIS_MODEL_SIGN_KEY="legacy-key"
    )
    client = await start_client(rotated)
    new = await (await post_version(client, "m", "2", b"v2")).json()
    assert new["key_id"] == "k2"
    assert new["signature"] == hmac_hex("secret-two", "m", "2", sha256_hex(b"v2"))
    assert (await validity(client, "m", "1"))["valid"] is True
    # A CI job that signed with the legacy single key still registers.
    legacy_sig = hmac_hex("legacy-key", "m", "3", sha256_hex(b"v3"))
    legacy = await post_version(client, "m", "3", b"v3", signature=legacy_sig, key_id="legacy")
    assert legacy.status == 201
    # Verification uses the recorded key id only: k1's signature under k2's id fails.
    k1_sig = hmac_hex("secret-one", "m", "4", sha256_hex(b"v4"))
    mislabelled = await post_version(client, "m", "4", b"v4", signature=k1_sig, key_id="k2")
    assert mislabelled.status == 422
    await client.close()

    retired = make_settings(database_url, AEGIS_MODEL_SIGN_KEYS="k2:secret-two", AEGIS_MODEL_SIGN_KEY="")
    client = await start_client(retired)
    gone = await validity(client, "m", "1")
    assert gone["valid"] is False
    assert gone["signature_ok"] is False
    assert "unknown key" in gone["problems"][0]


async def test_ed25519_signs_the_same_facts_and_verifies_with_the_public_key(
    make_settings: Any, database_url: str, start_client: Any, tmp_path: Path
) -> None:
    private = Ed25519PrivateKey.generate()
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public_file = tmp_path / "verify.pem"
    public_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    signer = make_settings(
        database_url, AEGIS_MODEL_SIGN_ALGORITHM="ed25519", AEGIS_MODEL_SIGN_ED25519_KEY_FILE=key_file
    )
    client = await start_client(signer)
    document = await (await post_version(client, "m", "1", b"weights")).json()
    assert document["algorithm"] == "ed25519"
    assert document["key_id"].startswith("ed25519:")
    message = f"m|1|{sha256_hex(b'weights')}".encode()
    private.public_key().verify(bytes.fromhex(document["signature"]), message)
    await client.close()

    verifier = make_settings(database_url, AEGIS_MODEL_VERIFY_ED25519_KEYS=public_file)
    client = await start_client(verifier)
    assert (await validity(client, "m", "1"))["valid"] is True
