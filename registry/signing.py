"""Signing and verifying the facts of a model version: HMAC-SHA256 (the seed's format) or Ed25519.

Pure computation over bytes and keys; keys arrive already loaded (see `keyring_from_env`).
The signed message is exactly `f"{model_name}|{version}|{checksum}"`, so a CI job can
compute an HMAC signature with nothing but the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

LEGACY_KEY_ID = "legacy"


class Algorithm(StrEnum):
    HMAC_SHA256 = "hmac-sha256"
    ED25519 = "ed25519"


class SigningConfigError(ValueError):
    """The signing keys in the environment cannot be used; the message says which setting."""


def signed_message(model_name: str, version: str, checksum: str) -> bytes:
    return f"{model_name}|{version}|{checksum}".encode()


def hmac_signature(key: bytes, model_name: str, version: str, checksum: str) -> str:
    return hmac.new(key, signed_message(model_name, version, checksum), hashlib.sha256).hexdigest()


def ed25519_key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signature:
    signature: str
    key_id: str
    algorithm: Algorithm


@dataclass(frozen=True)
class Keyring:
    """Verify keys by key id, and which one signs.

    A signature is verified only with the key its record names: trying every key
    would make retiring one meaningless.
    """

    hmac_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    ed25519_public: Mapping[str, Ed25519PublicKey] = field(default_factory=dict, repr=False)
    ed25519_private: Ed25519PrivateKey | None = field(default=None, repr=False)
    signing_key_id: str | None = None

    @property
    def key_ids(self) -> list[str]:
        return [*self.hmac_keys, *self.ed25519_public]

    def sign(self, model_name: str, version: str, checksum: str) -> Signature:
        kid = self.signing_key_id
        if kid is None:
            raise SigningConfigError(
                "no signing key is configured: set AEGIS_MODEL_SIGN_KEY or AEGIS_MODEL_SIGN_KEYS"
            )
        if kid in self.hmac_keys:
            sig = hmac_signature(self.hmac_keys[kid], model_name, version, checksum)
            return Signature(sig, kid, Algorithm.HMAC_SHA256)
        assert self.ed25519_private is not None
        raw = self.ed25519_private.sign(signed_message(model_name, version, checksum))
        return Signature(raw.hex(), kid, Algorithm.ED25519)

    def verify(
        self, model_name: str, version: str, checksum: str, *, signature: str, key_id: str
    ) -> bool:
        if key_id in self.hmac_keys:
            expected = hmac_signature(self.hmac_keys[key_id], model_name, version, checksum)
            # Bytes, not str: compare_digest refuses non-ASCII strings with a TypeError.
            return hmac.compare_digest(expected.encode(), signature.lower().encode())
        public = self.ed25519_public.get(key_id)
        if public is None:
            return False
        try:
            public.verify(bytes.fromhex(signature), signed_message(model_name, version, checksum))
        except (InvalidSignature, ValueError):
            return False
        return True

    def knows(self, key_id: str) -> bool:
        return key_id in self.hmac_keys or key_id in self.ed25519_public


def parse_hmac_keys(spec: str) -> dict[str, bytes]:
    """`kid:secret,kid:secret` (the first signs) into an ordered mapping."""
    keys: dict[str, bytes] = {}
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        kid, sep, secret = item.partition(":")
        if not sep or not kid or not secret:
            raise SigningConfigError(
                f"AEGIS_MODEL_SIGN_KEYS entry {index + 1} is not 'key_id:secret'"
            )
        if "|" in kid or kid in keys:
            raise SigningConfigError(
                f"AEGIS_MODEL_SIGN_KEYS entry {index + 1}: key id {kid!r} is repeated or has '|'"
            )
        keys[kid] = secret.encode()
    return keys


def keyring_from_env(
    env: Mapping[str, str],
) -> Keyring:
    """Build the keyring from the environment (reads key files named there).

    AEGIS_MODEL_SIGN_KEYS="k2:secret2,k1:secret1": the first signs, all verify.
    AEGIS_MODEL_SIGN_KEY: the seed's single key, key id `legacy`; signs when no list is given.
    AEGIS_MODEL_SIGN_ED25519_KEY_FILE: a PEM private key; with AEGIS_MODEL_SIGN_ALGORITHM=ed25519 it signs.
    AEGIS_MODEL_VERIFY_ED25519_KEYS: comma-separated PEM public key files that verify only.
    """
    hmac_keys = parse_hmac_keys(env.get("AEGIS_MODEL_SIGN_KEYS", ""))
    signing_kid = next(iter(hmac_keys), None)
    legacy = env.get("AEGIS_MODEL_SIGN_KEY", "")
    if legacy:
        hmac_keys.setdefault(LEGACY_KEY_ID, legacy.encode())
        signing_kid = signing_kid or LEGACY_KEY_ID
    public_keys: dict[str, Ed25519PublicKey] = {}
    private: Ed25519PrivateKey | None = None
    private_file = env.get("AEGIS_MODEL_SIGN_ED25519_KEY_FILE", "")
    if private_file:
        private = load_ed25519_private(Path(private_file))
        public_keys[ed25519_key_id(private.public_key())] = private.public_key()
    for path in filter(None, (p.strip() for p in env.get("AEGIS_MODEL_VERIFY_ED25519_KEYS", "").split(","))):
        public = load_ed25519_public(Path(path))
        public_keys[ed25519_key_id(public)] = public
    algorithm = env.get("AEGIS_MODEL_SIGN_ALGORITHM", "")
    if algorithm == Algorithm.ED25519:
        if private is None:
            raise SigningConfigError(
                "AEGIS_MODEL_SIGN_ALGORITHM=ed25519 needs AEGIS_MODEL_SIGN_ED25519_KEY_FILE"
            )
        signing_kid = ed25519_key_id(private.public_key())
    elif algorithm not in ("", Algorithm.HMAC_SHA256):
        raise SigningConfigError(
            f"AEGIS_MODEL_SIGN_ALGORITHM={algorithm!r} is unknown: use hmac-sha256 or ed25519"
        )
    return Keyring(hmac_keys, public_keys, private, signing_kid)


def load_ed25519_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningConfigError(f"cannot load the Ed25519 private key file {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningConfigError(f"{path} holds a private key that is not Ed25519")
    return key


def load_ed25519_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SigningConfigError(f"cannot load the Ed25519 public key file {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningConfigError(f"{path} holds a public key that is not Ed25519")
    return key
