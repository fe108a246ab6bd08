"""Signed download URLs: an HMAC over the version and an expiry, checked without a token (pure)."""

from __future__ import annotations

import hashlib
import hmac

from registry.errors import Forbidden


def url_signature(key: bytes, model_name: str, version: str, expires: int) -> str:
    message = f"download|{model_name}|{version}|{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check_url_signature(
    key: bytes, model_name: str, version: str, *, expires: str, signature: str, now: float
) -> int:
    """The URL's expiry (Unix seconds); Forbidden unless we signed it for this version and it is valid."""
    try:
        expires_at = int(expires)
    except ValueError:
        raise Forbidden("the download URL is malformed; ask for a new one") from None
    expected = url_signature(key, model_name, version, expires_at)
    # Bytes, not str: compare_digest refuses non-ASCII strings with a TypeError.
    if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
        raise Forbidden("the download URL's signature is not valid; ask for a new URL")
    if now > expires_at:
        raise Forbidden("the download URL has expired; ask for a new one with POST …/artifact-url")
    return expires_at
