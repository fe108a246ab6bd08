"""HTTP plumbing shared by every Aegis API: JSON errors, JSON bodies and token checks."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from registry.auth import Principal, Role, TokenTable, require
from registry.boundary import JSON, Error, ErrorDetail
from registry.errors import MalformedRequest, RegistryError

log = logging.getLogger(__name__)

TOKENS = web.AppKey("tokens", TokenTable)
MAX_JSON_BODY_BYTES = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str) -> web.Response:
    body = Error(error=ErrorDetail(code=code, message=message))
    return web.Response(body=body.model_dump_json(), status=status, content_type=JSON)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes `{"error": {"code", "message"}}`; nothing internal leaks out."""
    try:
        return await handler(request)
    except RegistryError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            message = "the request body is too large"
        response = error_response(exc.status, code, message)
        if "Allow" in exc.headers:  # a 405 says which methods would work (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; the server log has details")


def authorize(request: web.Request, role: Role) -> Principal:
    principal = request.app[TOKENS].authenticate(request.headers.get("Authorization"))
    require(principal, role)
    return principal


async def read_body(request: web.Request) -> bytes:
    """The whole request body, up to MAX_JSON_BODY_BYTES, or a 400 that says it is too large."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY_BYTES:
        raise MalformedRequest(f"the JSON body is larger than {MAX_JSON_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_JSON_BODY_BYTES + 1)
    if len(raw) > MAX_JSON_BODY_BYTES:
        raise MalformedRequest(f"the JSON body is larger than {MAX_JSON_BODY_BYTES} bytes")
    return raw


def error_message(raw: bytes, status: int) -> str:
    """What an Aegis error body (`{"error": {"message"}}`) says, or the start of any other body."""
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:300].decode(errors="replace") or f"HTTP {status}"


async def read_json(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it (untyped callers)."""
    raw = await read_body(request)
    if not raw.strip():
        if required:
            raise MalformedRequest("the request needs a JSON object body")
        return {}
    return parse_json_object(raw, what="the request body")


def parse_json_object(raw: bytes, *, what: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedRequest(f"{what} must be a JSON object")
    return document
