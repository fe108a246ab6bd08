"""Whether downloaded bytes are the registered, signed artifact (pure: hashes and keys in, verdict out).

The server checks both facts itself rather than trusting the registry's word:
the checksum proves the bytes are the ones registered, the signature proves a
key holder registered them. Messages name the key id, never the key.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from modelserver.errors import ArtifactRejected, ArtifactUnavailable
from registry.signing import Keyring


@dataclass(frozen=True)
class VersionFacts:
    """The signed facts of a version as the registry's version document states them."""

    checksum: str
    signature: str
    key_id: str
    algorithm: str

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> VersionFacts:
        fields = {name: document.get(name) for name in ("checksum", "signature", "key_id", "algorithm")}
        missing = sorted(name for name, value in fields.items() if not isinstance(value, str) or not value)
        if missing:
            raise ArtifactUnavailable(f"the registry's version document has no {', '.join(missing)}")
        return cls(**{name: str(value) for name, value in fields.items()})


def verify_artifact(
    model_name: str, version: str, facts: VersionFacts, *, downloaded_checksum: str, keyring: Keyring
) -> None:
    """Raise ArtifactRejected unless the bytes hash to the registered checksum and it is signed.

    The signature is checked over *our* model name and version, so a document for
    another version cannot pass for this one.
    """
    if not hmac.compare_digest(facts.checksum.lower(), downloaded_checksum.lower()):
        raise ArtifactRejected(
            f"checksum mismatch: registry says {facts.checksum}, "
            f"downloaded bytes hash to {downloaded_checksum}"
        )
    if not keyring.knows(facts.key_id):
        raise ArtifactRejected(
            f"no key configured to verify key id {facts.key_id!r}: set AEGIS_MODEL_SIGN_KEY "
            "(or AEGIS_MODEL_SIGN_KEYS / AEGIS_MODEL_VERIFY_ED25519_KEYS)"
        )
    if not keyring.verify(
        model_name, version, facts.checksum, signature=facts.signature, key_id=facts.key_id
    ):
        raise ArtifactRejected(
            f"signature does not verify with key {facts.key_id!r} ({facts.algorithm}): "
            "the artifact was not signed by that key for this model and version"
        )
