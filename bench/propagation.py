"""propagation: from `PUT /v1/traffic` to the first response from the new target, through real Envoy.

Two real model servers behind Envoy from envoy/envoy-rest.yaml; the weights flip between
them and a client polling through Envoy notes when the new version first answers.
Measured with long-poll (the default hold) and with plain polling (hold 0, Envoy's
RDS refresh_delay 1 s) in the same run; the plain-polling median is the baseline.
Target: a median under 20 ms with long-poll.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import report, rss_bytes
from tests.e2e.stack import Stack
from tests.processes import XdsTransport

MODEL = "bench-propagation"


async def first_answer_from(session: aiohttp.ClientSession, gateway: str, version: str) -> float:
    """Poll through Envoy until `version` answers; returns the monotonic time it did."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        url = f"{gateway}/v1/models/{MODEL}:predict"
        async with session.post(url, json={"instances": [[1]]}) as response:
            await response.read()
            if response.headers.get("x-model-version") == version:
                return time.monotonic()
    raise TimeoutError(f"{version} never answered")


async def switches(stack: Stack, count: int) -> list[float]:
    """Milliseconds from each PUT to the first answer of the newly weighted version."""
    timings = []
    async with aiohttp.ClientSession() as session:
        for index in range(count):
            target = "2" if index % 2 == 0 else "1"
            weights = {"1": 0, "2": 100} if target == "2" else {"1": 100, "2": 0}
            started = time.monotonic()
            watcher = asyncio.create_task(first_answer_from(session, stack.gateway, target))
            await asyncio.to_thread(stack.set_traffic, MODEL, weights)
            answered = await watcher
            timings.append((answered - started) * 1000)
            await asyncio.to_thread(stack.wait_acked, MODEL)
            # Waiting for the acknowledgement lines the next switch up with Envoy's poll
            # cycle; a random pause puts the change at a random point of that cycle.
            await asyncio.sleep(random.uniform(0, 2))
    return timings


def measure(hold_seconds: float, count: int) -> tuple[list[float], dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="aegis-bench-prop-") as scratch:
        # REST: this benchmark compares long-poll with plain polling (envoy/envoy-rest.yaml).
        stack = Stack(
            Path(scratch), hold_seconds=hold_seconds, transport=XdsTransport.REST,
            extra_env={"AEGIS_XDS_RDS_REFRESH_DELAY_MS": "1000"},  # the baseline this benchmark names
        ).start()
        try:
            for version in ("1", "2"):
                stack.register(MODEL, version, f"weights {version}".encode() * 100)
            stack.promote(MODEL, "1", "prod")
            stack.promote(MODEL, "2", "canary")
            stack.start_model_server(MODEL, "1", ttl=30)
            stack.start_model_server(MODEL, "2", ttl=30)
            stack.set_traffic(MODEL, {"1": 100, "2": 0})
            stack.wait_acked(MODEL)
            timings = asyncio.run(switches(stack, count))
            assert stack.envoy is not None and stack.envoy.process and stack.aegis.process
            memory = {
                "envoy_rss_mib": rss_bytes(stack.envoy.process.pid) / 2**20,
                "aegis_rss_mib": rss_bytes(stack.aegis.process.pid) / 2**20,
            }
        finally:
            stack.close()
    return timings, memory


def summary(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
        "max_ms": round(ordered[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--switches", type=int, default=20)
    args = parser.parse_args()
    long_poll, memory = measure(5.0, args.switches)
    plain, _ = measure(0.0, args.switches)
    long_summary, plain_summary = summary(long_poll), summary(plain)
    report(
        "propagation", value=long_summary["median_ms"], unit="ms",
        baseline="plain REST polling, refresh_delay 1 s", baseline_value=plain_summary["median_ms"],
        target=20.0, higher_is_better=False,
        details={"switches": args.switches, "long_poll": long_summary, "plain_poll": plain_summary,
                 **{k: round(v, 1) for k, v in memory.items()}},
    )


if __name__ == "__main__":
    main()
