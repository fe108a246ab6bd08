"""Keep this server's endpoint registered with the control plane, and withdraw it on shutdown.

The control plane drops an endpoint that is not renewed within its TTL, so a
crashed server stops getting traffic by itself; renewing every TTL/3 survives two
lost renewals. Failures are logged and retried, never fatal: the control plane
may restart, and traffic should resume when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

ENDPOINTS_PATH = "/v1/endpoints"
# Seconds for one registration call: well under the shortest sensible renew interval.
REQUEST_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class EndpointRegistration:
    model_name: str
    version: str
    address: str
    port: int
    # Seconds the control plane keeps the endpoint without a renewal.
    ttl_seconds: int

    def identity(self) -> dict[str, Any]:
        """The body of the DELETE: which endpoint, without a TTL."""
        return {
            "model_name": self.model_name, "version": self.version,
            "address": self.address, "port": self.port,
        }

    def document(self) -> dict[str, Any]:
        return {**self.identity(), "ttl_seconds": self.ttl_seconds}

    @property
    def renew_interval_seconds(self) -> float:
        return self.ttl_seconds / 3


class EndpointAnnouncer:
    """Registers one endpoint now and every TTL/3 until stopped; `withdraw` removes it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        registry_url: str,
        registration: EndpointRegistration,
        *,
        token: str,
    ) -> None:
        self._session = session
        self._url = registry_url.rstrip("/") + ENDPOINTS_PATH
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.registration = registration
        self._last_problem: str | None = ""  # "" = not tried yet, None = the last call succeeded

    async def run(self, stop: asyncio.Event) -> None:
        """Announce until `stop` is set; the wait is interruptible so shutdown is immediate."""
        while not stop.is_set():
            await self.announce()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.registration.renew_interval_seconds)

    async def announce(self) -> bool:
        problem = await self._call("POST", self.registration.document())
        if problem is None and self._last_problem is not None:
            log.info("endpoint %s registered with %s (ttl %ss)", self._label, self._url,
                     self.registration.ttl_seconds)
        elif problem is not None and problem != self._last_problem:
            log.warning("cannot register endpoint %s: %s; retrying every %.1fs", self._label, problem,
                        self.registration.renew_interval_seconds)
        self._last_problem = problem
        return problem is None

    async def withdraw(self) -> bool:
        problem = await self._call("DELETE", self.registration.identity())
        if problem is None:
            log.info("endpoint %s withdrawn", self._label)
        else:
            log.warning("cannot withdraw endpoint %s: %s; it drops out after its ttl of %ss",
                        self._label, problem, self.registration.ttl_seconds)
        return problem is None

    async def _call(self, method: str, body: dict[str, Any]) -> str | None:
        """None on success, else what went wrong (for the log)."""
        try:
            async with self._session.request(
                method, self._url, json=body, headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            ) as response:
                if response.status < 300:
                    return None
                detail = (await response.text())[:200]
                return f"{method} {ENDPOINTS_PATH} answered {response.status}: {detail}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{method} {ENDPOINTS_PATH} failed: {exc!r}"

    @property
    def _label(self) -> str:
        r = self.registration
        return f"{r.model_name} {r.version} at {r.address}:{r.port}"
