"""HTTP plumbing shared by every Aegis API: JSON errors, whole request bodies, JSON bodies, tokens.

Every request body is read here, by `read_body`: to its end (one read of
aiohttp's buffer returns only what has arrived so far), within a size limit per
endpoint (413), and with an idle timeout (408) so that a client that stops
sending does not hold a connection. JSON is parsed by `registry.strict_json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.exc import DBAPIError

from registry.auth import Principal, Role, TokenTable, require
from registry.boundary import JSON, Error, ErrorDetail
from registry.errors import MalformedRequest, PayloadTooLarge, RegistryError, RequestTimeout
from registry.store import DatabaseUnavailable
from registry.strict_json import json_object as json_object
from registry.strict_json import parse_json as parse_json
from registry.strict_json import parse_json_object as parse_json_object

log = logging.getLogger(__name__)

TOKENS = web.AppKey("tokens", TokenTable)
# Seconds a request body may go without a single byte arriving. An app sets it
# from AEGIS_BODY_READ_TIMEOUT_SECONDS; apps that do not get the default.
BODY_READ_TIMEOUT = web.AppKey("body_read_timeout_seconds", float)
DEFAULT_BODY_READ_TIMEOUT_SECONDS = 30.0
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
    except RequestTimeout as exc:
        return await _answer_and_close(request, error_response(exc.status, exc.code, exc.message))
    except RegistryError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except (DBAPIError, DatabaseUnavailable):
        # The database refused or lost a statement (full disk, failover, a lost connection) or
        # could not be reached: the transaction rolled back, and the same request is worth retrying.
        log.exception("database error in %s %s", request.method, request.path)
        return error_response(
            503, "storage_unavailable",
            "the database did not take the change; retry shortly (the server log has details)",
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; the server log has details")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = exc.reason.lower().replace(" ", "_")
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 404:
        message = f"no such endpoint: {request.method} {request.path}"
    elif exc.status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    elif exc.status == 413:
        message = "the request body is too large"
    response = error_response(exc.status, code, message)
    if "Allow" in exc.headers:  # RFC 9110: a 405 must list the methods the resource allows
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then drop the connection at once.

    The rest of a stalled body will not come; aiohttp would otherwise keep reading
    ("lingering") for another 10 s before it lets the connection go.
    """
    response.force_close()
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()
    return response


def authorize(request: web.Request, role: Role) -> Principal:
    principal = request.app[TOKENS].authenticate(request.headers.get("Authorization"))
    require(principal, role)
    return principal


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The whole request body: 413 past `limit` bytes, 408 when it stalls."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(_too_large(f"the request body ({declared} bytes)", limit))
    collected = bytearray()
    async with body_idle_timeout(request):
        while chunk := await request.content.readany():
            collected += chunk
            # A chunked body declares no length: count it as it arrives.
            if len(collected) > limit:
                raise PayloadTooLarge(_too_large("the request body", limit))
    return bytes(collected)


def _too_large(subject: str, limit: int) -> str:
    return f"{subject} is larger than this endpoint's limit of {limit} bytes; send a smaller body"


@contextlib.asynccontextmanager
async def body_idle_timeout(request: web.Request) -> AsyncIterator[None]:
    """Raise 408 when the body being read gets no new byte for the body read timeout.

    Progress is the stream's byte counter, not the end of the await: a large
    multipart chunk read from a slow but live client keeps going.
    """
    seconds = request.config_dict.get(BODY_READ_TIMEOUT, DEFAULT_BODY_READ_TIMEOUT_SECONDS)
    loop = asyncio.get_running_loop()
    stream = request.content
    seen = stream.total_bytes
    handle: asyncio.TimerHandle | None = None

    def check(timeout: asyncio.Timeout) -> None:
        nonlocal seen, handle
        if stream.total_bytes != seen:
            seen = stream.total_bytes
            timeout.reschedule(loop.time() + seconds)
        handle = loop.call_later(seconds / 2, check, timeout)

    try:
        async with asyncio.timeout(seconds) as timeout:
            handle = loop.call_later(seconds / 2, check, timeout)
            yield
    except TimeoutError:
        if not timeout.expired():
            raise
        raise RequestTimeout(
            f"no part of the request body arrived for {seconds:g} s "
            "(AEGIS_BODY_READ_TIMEOUT_SECONDS); the connection is closed"
        ) from None
    finally:
        if handle is not None:
            handle.cancel()


async def read_json(
    request: web.Request, *, required: bool = True, limit: int = MAX_JSON_BODY_BYTES
) -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx that says what is wrong with it."""
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        if required:
            raise MalformedRequest("the request needs a JSON object body")
        return {}
    return parse_json_object(raw, what="the request body")

