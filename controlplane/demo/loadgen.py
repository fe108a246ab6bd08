"""A steady stream of predictions through Envoy, with what each model version answered.

The numbers in the demo's live view come from here, measured at the client: request
rate, error rate and p99 latency per version (the `x-model-version` header says who
answered), and when a version last answered (for "fault to zero canary traffic").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Answer:
    at: float
    version: str
    status: int
    latency_ms: float


@dataclass(frozen=True)
class ArmStats:
    version: str
    rate: float
    error_rate: float
    p99_ms: float


class LoadGenerator:
    """`rate` predictions per second against `gateway` for `model`, until stopped."""

    def __init__(self, gateway: str, model: str, *, rate: float = 40.0, keep_seconds: float = 120.0) -> None:
        self.url = f"{gateway}/v1/models/{model}:predict"
        self.rate = rate
        self.keep_seconds = keep_seconds
        self.answers: deque[Answer] = deque()
        self.first_error: dict[str, float] = {}
        self.last_answer: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, *self._pending, return_exceptions=True)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            index = 0
            next_at = time.monotonic()
            while True:
                next_at += 1 / self.rate
                task = asyncio.get_running_loop().create_task(self._one(session, index))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
                index += 1
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _one(self, session: aiohttp.ClientSession, index: int) -> None:
        started = time.monotonic()
        try:
            async with session.post(self.url, json={"instances": [[index % 97]]}) as response:
                await response.read()
                version, status = response.headers.get("x-model-version", "envoy"), response.status
        except (aiohttp.ClientError, TimeoutError):
            version, status = "unreachable", 0
        now = time.monotonic()
        self._record(Answer(now, version, status, (now - started) * 1000))

    def _record(self, answer: Answer) -> None:
        self.answers.append(answer)
        self.last_answer[answer.version] = answer.at
        if answer.status >= 500 and answer.version not in self.first_error:
            self.first_error[answer.version] = answer.at
        while self.answers and self.answers[0].at < answer.at - self.keep_seconds:
            self.answers.popleft()

    def stats(self, window_seconds: float = 5.0) -> list[ArmStats]:
        """Per answering version over the last `window_seconds`."""
        since = time.monotonic() - window_seconds
        by_version: dict[str, list[Answer]] = {}
        for answer in self.answers:
            if answer.at >= since:
                by_version.setdefault(answer.version, []).append(answer)
        result = []
        for version, answers in sorted(by_version.items()):
            latencies = sorted(a.latency_ms for a in answers)
            errors = sum(1 for a in answers if a.status >= 500 or a.status == 0)
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            result.append(ArmStats(version, len(answers) / window_seconds, errors / len(answers), p99))
        return result
