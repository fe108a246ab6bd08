"""HTTP/1.1 over a plain socket, for tests that must control how a body reaches the server.

An HTTP client library writes a body the way it likes; these helpers send it in
the pieces a test chooses, with pauses between them, or stop sending altogether.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient


def port_of(client: TestClient[Any, Any]) -> int:
    """The port of a started test server."""
    assert client.port is not None, "start the test server first"
    return client.port


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        return str(self.json()["error"]["message"])


def request_head(
    method: str, path: str, *, headers: dict[str, str] | None = None, content_length: int | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if content_length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(data: bytes, *, size: int = 65536) -> bytes:
    """`data` in the chunked transfer coding, ending with the last chunk."""
    out = bytearray()
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One response, read up to the end of its body (not to the end of the connection)."""
    async with asyncio.timeout(30):
        return await _read_response(reader)


async def _read_response(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return RawResponse(int(status_line.split()[1]), headers, body)


async def send_in_pieces(
    port: int,
    method: str,
    path: str,
    pieces: list[bytes],
    *,
    headers: dict[str, str] | None = None,
    pause: float = 0.3,
) -> RawResponse:
    """Send the head with the first piece, then each further piece after `pause` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = request_head(
            method, path, headers={"Connection": "close", **(headers or {})},
            content_length=sum(len(p) for p in pieces),
        )
        for index, piece in enumerate(pieces):
            if index:
                await asyncio.sleep(pause)
            writer.write(head + piece if index == 0 else piece)
            await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


def json_body(document: Any, *, padding: int = 0) -> bytes:
    """`document` as JSON with `padding` bytes of whitespace inside its outer brackets.

    Whitespace is valid JSON anywhere between tokens, so the body means exactly
    what the small document means, whatever schema the endpoint checks.
    """
    text = json.dumps(document).encode()
    return text[:-1] + b" " * padding + text[-1:]
