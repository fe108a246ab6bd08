"""Request load through Envoy for end-to-end tests: counts of answers by status and version."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp

Tally = Counter[tuple[int, str]]


async def send(
    gateway: str, model: str, count: int, *, headers: dict[str, str] | None = None, concurrency: int = 16
) -> Tally:
    """`count` predictions through the gateway; (status, answering version) -> how many."""
    tally: Tally = Counter()
    queue = iter(range(count))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def worker() -> None:
            for index in queue:
                await _one(session, gateway, model, index, headers, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def stream_for(gateway: str, model: str, seconds: float, *, stop: asyncio.Event | None = None) -> Tally:
    """A steady stream of predictions for `seconds` (or until `stop` is set)."""
    tally: Tally = Counter()
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def worker(offset: int) -> None:
            index = offset
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                await _one(session, gateway, model, index, None, tally)
                index += 4
                await asyncio.sleep(0.005)

        await asyncio.gather(*(worker(n) for n in range(4)))
    return tally


async def _one(
    session: aiohttp.ClientSession,
    gateway: str,
    model: str,
    index: int,
    headers: dict[str, str] | None,
    tally: Tally,
) -> None:
    try:
        async with session.post(
            f"{gateway}/v1/models/{model}:predict", json={"instances": [[index]]}, headers=headers
        ) as response:
            await response.read()
            tally[(response.status, response.headers.get("x-model-version", "-"))] += 1
    except aiohttp.ClientError:
        tally[(0, "connection-error")] += 1


def binomial_bounds(trials: int, p: float, *, sigmas: float = 4.5) -> tuple[float, float]:
    """Where a binomial count lands with overwhelming probability (4.5 sigma: ~1 in 150,000 fails)."""
    mean = trials * p
    spread = sigmas * (trials * p * (1 - p)) ** 0.5
    return mean - spread, mean + spread
