"""A small synchronous client of the Aegis HTTP API for the CLI (`AEGIS_URL`, `AEGIS_TOKEN`)."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from registry.errors import error_message


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
    print(f"aegis: {cli_message(exc.message)}", file=sys.stderr)
    return EXIT_UNREACHABLE if exc.status == 0 else EXIT_REFUSED


_NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
# The API's messages point API users at HTTP calls; a CLI user gets the command that makes
# that call. Most specific first: a later pattern would match a prefix of an earlier one.
_CLI_COMMANDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), command)
    for pattern, command in (
        (rf"^(?P<m>{_NAME}) has no rollout; GET /v1/rollouts lists them$",
         "no rollout for {m}; start one with `aegis promote {m} VERSION --to canary` "
         "(a rollout starts when a policy matches {m}); `aegis rollout status` lists rollouts"),
        (rf"GET /v1/rollouts/(?P<m>{_NAME})/history\b", "`aegis rollout history {m}`"),
        (rf"POST /v1/rollouts/(?P<m>{_NAME})/(?P<c>[a-z|]+)", "`aegis rollout {c} {m}`"),
        (rf"GET /v1/rollouts/(?P<m>{_NAME})", "`aegis rollout status {m}`"),
        (r"GET /v1/rollouts\b", "`aegis rollout status`"),
        (r"GET /v1/registry/models\b", "`aegis models`"),
        (rf"POST /v1/registry/(?P<m>{_NAME})/(?P<v>{_NAME})/promote", "`aegis promote {m} {v} --to STAGE`"),
        (rf"POST /v1/registry/(?P<m>{_NAME})/rollback", "`aegis rollback {m}`"),
        (rf"GET /v1/registry/(?P<m>{_NAME})/(?P<v>{_NAME})/validate", "`aegis validate {m} {v}`"),
        (rf"GET /v1/registry/(?P<m>{_NAME})\b(?!/)", "`aegis versions {m}`"),
        (rf"(?:GET|PUT) /v1/traffic/(?P<m>{_NAME})", "`aegis traffic {m}`"),
        (r"GET /v1/xds/nodes\b", "`aegis nodes`"),
        (r"^no such endpoint: (?P<call>.+)$",
         "this server has no endpoint for that ({call}): is AEGIS_URL an Aegis of this CLI's version?"),
    )
)


def cli_message(message: str) -> str:
    """An API error message in the CLI's words: HTTP calls it suggests become `aegis` commands."""
    for pattern, command in _CLI_COMMANDS:
        message = pattern.sub(_filled(command), message)
    return message


def _filled(command: str) -> Callable[[re.Match[str]], str]:
    return lambda match: command.format(**match.groupdict())


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

