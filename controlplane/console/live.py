"""Server-sent events that keep a page's live parts current.

A live part is a fragment of the page (an element id and how to render its HTML).
The stream looks at a cheap in-memory signature of each part every tick (the
weights, acknowledgements and rollout state the services hold); when it changes, or
when the part's refresh interval has passed, the part is rendered again and sent if
its HTML differs. So a weight change reaches the page within about a tick, and the
database is read only when something changed.

The stream checks the session on every tick: a sign-out or an expired session ends
it with an `end` event, and the page reloads into the sign-in form.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass

from aiohttp import web

from controlplane.console.guard import session_of

TICK_SECONDS = 0.1
# A comment line now and then: proxies close connections that stay silent.
KEEPALIVE_SECONDS = 15.0
CLOSING = web.AppKey("console_closing", asyncio.Event)


@dataclass(frozen=True)
class LivePart:
    target: str  # the id of the element whose content the HTML replaces
    render: Callable[[], Awaitable[str]]
    signature: Callable[[], Hashable]
    refresh_seconds: float  # render again after this long even when the signature holds


async def stream(request: web.Request, parts: Sequence[LivePart]) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    closing = request.app[CLOSING]
    sent: dict[str, str] = {}
    signatures: dict[str, Hashable] = {}
    rendered_at: dict[str, float] = {}
    last_write = time.monotonic()
    try:
        while not closing.is_set():
            if session_of(request) is None:
                await response.write(b"event: end\ndata: signed out\n\n")
                break
            now = time.monotonic()
            for part in parts:
                signature = part.signature()
                due = now - rendered_at.get(part.target, -1e9) >= part.refresh_seconds
                if not due and signatures.get(part.target) == signature:
                    continue
                signatures[part.target], rendered_at[part.target] = signature, now
                html = await part.render()
                if sent.get(part.target) != html:
                    sent[part.target] = html
                    payload = json.dumps({"target": part.target, "html": html})
                    await response.write(f"event: fragment\ndata: {payload}\n\n".encode())
                    last_write = now
            if now - last_write > KEEPALIVE_SECONDS:
                await response.write(b": keepalive\n\n")
                last_write = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), TICK_SECONDS)
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away
    return response
