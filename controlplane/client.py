"""A small synchronous client of the Aegis HTTP API for the CLI (`AEGIS_URL`, `AEGIS_TOKEN`)."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from registry.http import error_message


class ApiError(Exception):
    """The server said no (status >= 400) or could not be reached (status 0); message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# The exit codes scripts can trust.
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def report(exc: ApiError) -> int:
    """Print why the call failed and return the exit code for it."""
    print(f"aegis: {exc.message}", file=sys.stderr)
    return EXIT_UNREACHABLE if exc.status == 0 else EXIT_REFUSED


class AegisClient:
    def __init__(self, base_url: str | None = None, token: str | None = None, *, timeout: float = 30) -> None:
        self.base_url = (base_url or os.environ.get("AEGIS_URL") or "http://127.0.0.1:8080").rstrip("/")
        self.token = token if token is not None else os.environ.get("AEGIS_TOKEN", "")
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, error_message(exc.read(), exc.code)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(
                0,
                f"cannot reach Aegis at {self.base_url}: {reason}; is `aegis serve` running "
                "and AEGIS_URL right?",
            ) from None
        return json.loads(raw) if raw else None

