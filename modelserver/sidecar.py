"""`aegis announce`: keep any HTTP model server's endpoint registered while its health URL answers.

A sidecar for servers that do not talk to Aegis themselves (Triton, KServe, TorchServe, a
Flask app): it checks the health URL every interval; while the answer is 2xx it announces
the endpoint (which renews its TTL), at the first failed check it withdraws it at once, and
it announces it again when the server recovers. On SIGTERM or SIGINT it withdraws and
exits 0. If a withdrawal cannot reach Aegis, the endpoint still leaves when its TTL runs
out, since nothing renews it. The announcing itself is the reference model server's
`EndpointAnnouncer`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import urllib.parse
from dataclasses import dataclass

import aiohttp

from modelserver.announce import EndpointAnnouncer, EndpointRegistration
from modelserver.settings import DEFAULT_REGISTRY_URL

log = logging.getLogger(__name__)

DEFAULT_HEALTH_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class HealthCheck:
    url: str
    # Seconds between checks: at most TTL/3, so that two lost renewals are survived.
    interval_seconds: float
    # Seconds a check may take before it counts as a failure.
    timeout_seconds: float


class HealthGatedAnnouncer:
    """Announces while healthy, withdraws when not; the state is whether it is announced."""

    def __init__(
        self, session: aiohttp.ClientSession, announcer: EndpointAnnouncer, health: HealthCheck
    ) -> None:
        self._session = session
        self.announcer = announcer
        self.health = health
        self.announced = False
        self._last_problem: str | None = ""  # "" = not checked yet, None = healthy

    async def run(self, stop: asyncio.Event) -> None:
        """Check, act, wait an interval (woken at once by `stop`); withdraw on the way out."""
        try:
            while not stop.is_set():
                await self.check_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.health.interval_seconds)
        finally:
            if self.announced:
                await self.announcer.withdraw()
                self.announced = False

    async def check_once(self) -> None:
        problem = await self._problem()
        if problem != self._last_problem:
            if problem is None:
                log.info("%s answers: announcing the endpoint", self.health.url)
            else:
                log.warning("health check failed: %s; the endpoint is withdrawn until it answers", problem)
        self._last_problem = problem
        if problem is None:
            # Every healthy check announces: a new endpoint is added, a known one renewed.
            self.announced = await self.announcer.announce() or self.announced
        elif self.announced:
            await self.announcer.withdraw()
            # Withdrawn, or not reachable: either way nothing renews it, so it leaves within its TTL.
            self.announced = False

    async def _problem(self) -> str | None:
        """None when the health URL answers 2xx in time, else what it did instead."""
        try:
            async with self._session.get(
                self.health.url, timeout=aiohttp.ClientTimeout(total=self.health.timeout_seconds),
                allow_redirects=False,
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"{self.health.url} answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{self.health.url} did not answer: {exc!r}"


def run(args: argparse.Namespace) -> int:
    """Announce until SIGTERM/SIGINT; 2 for arguments that cannot work."""
    try:
        registration, health = _checked(args)
    except ValueError as exc:
        print(f"aegis announce: {exc}", file=sys.stderr)
        return 2
    registry_url = args.registry_url or os.environ.get("AEGIS_URL") or DEFAULT_REGISTRY_URL
    token = os.environ.get("AEGIS_TOKEN", "")
    asyncio.run(_announce_until_signalled(registry_url, registration, health, token=token))
    return 0


def _checked(args: argparse.Namespace) -> tuple[EndpointRegistration, HealthCheck]:
    try:
        address = str(ipaddress.ip_address(args.address))
    except ValueError:
        raise ValueError(
            f"--address {args.address!r} must be an IP address (Envoy resolves no names here)"
        ) from None
    url = urllib.parse.urlsplit(args.health)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"--health {args.health!r} must be an http:// or https:// URL")
    longest = args.ttl_seconds / 3
    interval = longest if args.interval_seconds is None else args.interval_seconds
    if not 0 < interval <= longest:
        raise ValueError(
            f"--interval-seconds must be above 0 and at most ttl/3 ({longest:g}), or renewals come too late"
        )
    timeout = min(DEFAULT_HEALTH_TIMEOUT_SECONDS, interval) if args.health_timeout_seconds is None \
        else args.health_timeout_seconds
    if not 0 < timeout <= interval:
        raise ValueError(f"--health-timeout-seconds must be above 0 and at most the interval ({interval:g})")
    registration = EndpointRegistration(args.model, args.version, address, args.port, args.ttl_seconds)
    return registration, HealthCheck(args.health, interval, timeout)


async def _announce_until_signalled(
    registry_url: str, registration: EndpointRegistration, health: HealthCheck, *, token: str
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with aiohttp.ClientSession() as session:
        announcer = EndpointAnnouncer(session, registry_url, registration, token=token)
        await HealthGatedAnnouncer(session, announcer, health).run(stop)
