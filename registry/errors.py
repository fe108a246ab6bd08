"""The registry's error hierarchy: each error knows its HTTP status and a stable code."""

from __future__ import annotations

import json


class RegistryError(Exception):
    """Base of every error the registry reports to a caller; the message says what to fix."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RegistryError):
    status = 422
    code = "invalid_input"


class MalformedRequest(RegistryError):
    status = 400
    code = "malformed_request"


class NotFound(RegistryError):
    status = 404
    code = "not_found"


class Conflict(RegistryError):
    status = 409
    code = "conflict"


class PayloadTooLarge(RegistryError):
    status = 413
    code = "payload_too_large"


class Unauthorized(RegistryError):
    status = 401
    code = "unauthorized"


class Forbidden(RegistryError):
    status = 403
    code = "forbidden"


class RequestTimeout(RegistryError):
    """The client stopped sending its body; the connection is closed after the answer."""

    status = 408
    code = "request_timeout"


class StorageUnavailable(RegistryError):
    """The blob store did not answer or refused a request; nothing was stored, and a retry may work."""

    status = 503
    code = "storage_unavailable"


def error_message(raw: bytes, status: int) -> str:
    """What an Aegis error body (`{"error": {"message"}}`) says, or the start of any other body."""
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return raw[:300].decode(errors="replace") or f"HTTP {status}"
