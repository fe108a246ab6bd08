"""Signatures, key rings, tokens and download URLs: pure functions, checked against independent math."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from registry.auth import Role, TokenConfigError, TokenTable, require
from registry.download_urls import check_url_signature, url_signature
from registry.errors import Forbidden, Unauthorized
from registry.signing import SigningConfigError, hmac_signature, keyring_from_env, parse_hmac_keys

CHECKSUM = hashlib.sha256(b"weights").hexdigest()


def test_hmac_signature_is_the_seed_format() -> None:
    expected = hmac.new(b"k", f"m|1|{CHECKSUM}".encode(), hashlib.sha256).hexdigest()
    assert hmac_signature(b"k", "m", "1", CHECKSUM) == expected


def test_keyring_signs_with_the_first_listed_key_and_verifies_with_the_named_one() -> None:
    ring = keyring_from_env({"AEGIS_MODEL_SIGN_KEYS": "k2:two,k1:one", "AEGIS_MODEL_SIGN_KEY": "old"})
    made = ring.sign("m", "1", CHECKSUM)
    assert made.key_id == "k2"
    assert ring.verify("m", "1", CHECKSUM, signature=made.signature, key_id="k2")
    assert not ring.verify("m", "1", CHECKSUM, signature=made.signature, key_id="k1")
    legacy = hmac_signature(b"old", "m", "1", CHECKSUM)
    assert ring.verify("m", "1", CHECKSUM, signature=legacy, key_id="legacy")
    assert not ring.verify("m", "2", CHECKSUM, signature=made.signature, key_id="k2")
    assert not ring.verify("m", "1", CHECKSUM, signature=made.signature, key_id="unknown")


def test_a_signature_with_non_ascii_characters_does_not_verify_and_does_not_raise() -> None:
    ring = keyring_from_env({"AEGIS_MODEL_SIGN_KEYS": "k1:one"})

    assert not ring.verify("m", "1", CHECKSUM, signature="\u00e9" * 64, key_id="k1")


def test_legacy_key_alone_signs_as_legacy() -> None:
    ring = keyring_from_env({"AEGIS_MODEL_SIGN_KEY": "old"})
    assert ring.sign("m", "1", CHECKSUM).key_id == "legacy"


@pytest.mark.parametrize(
    "spec", ["nocolon", "k1:", ":secret", "k1:a,k1:b", "a|b:secret"]
)
def test_bad_key_lists_are_refused_without_echoing_secrets(spec: str) -> None:
    with pytest.raises(SigningConfigError) as raised:
        parse_hmac_keys(spec)
    assert "secret" not in str(raised.value).replace("'key_id:secret'", "")


def test_no_signing_key_is_a_clear_error() -> None:
    with pytest.raises(SigningConfigError, match="AEGIS_MODEL_SIGN_KEY"):
        keyring_from_env({}).sign("m", "1", CHECKSUM)


def test_ed25519_algorithm_needs_a_key_file() -> None:
    with pytest.raises(SigningConfigError, match="ED25519_KEY_FILE"):
        keyring_from_env({"AEGIS_MODEL_SIGN_ALGORITHM": "ed25519"})


@pytest.mark.parametrize(
    ("header", "error"),
    [(None, Unauthorized), ("", Unauthorized), ("Basic abc", Unauthorized), ("Bearer nope", Unauthorized)],
)
def test_tokens_refused(header: str | None, error: type[Exception]) -> None:
    table = TokenTable.parse("admin:a-token,viewer:v-token")
    with pytest.raises(error):
        table.authenticate(header)


def test_tokens_map_to_roles_and_names() -> None:
    table = TokenTable.parse("admin:a-token, operator:deployer:o-token ,viewer:v-token")
    assert table.authenticate("Bearer o-token").name == "deployer"
    assert table.authenticate("bearer a-token").role is Role.ADMIN
    require(table.authenticate("Bearer a-token"), Role.OPERATOR)
    with pytest.raises(Forbidden, match="needs the operator role"):
        require(table.authenticate("Bearer v-token"), Role.OPERATOR)
    assert "a-token" not in repr(table)


@pytest.mark.parametrize("spec", ["root:x", "admin", "admin:", "a:b:c:d"])
def test_bad_token_specs(spec: str) -> None:
    with pytest.raises(TokenConfigError):
        TokenTable.parse(spec)


def test_download_url_signatures() -> None:
    sig = url_signature(b"key", "m", "1", 1000)
    check_url_signature(b"key", "m", "1", expires="1000", signature=sig, now=999)
    for model_name, version, expires, now in [("m", "2", "1000", 999), ("m", "1", "1001", 999),
                                               ("m", "1", "1000", 1001), ("m", "1", "x", 1)]:
        with pytest.raises(Forbidden):
            check_url_signature(b"key", model_name, version, expires=expires, signature=sig, now=now)
