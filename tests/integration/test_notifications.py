"""Rollout events to webhooks: a receiver process gets each event once, signed; a receiver that
stalls is retried in the background while the rollout goes on at its own pace.

Policies without analysis, so no metric source is needed: the rollouts move on their steps,
their timers and operator commands alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import auth
from tests.integration.conftest import StartClient, upload_form
from tests.processes import free_port, stop

SIGNING_KEY = "notify-signing-key-0123456789"
POLICIES = """
policies:
  - name: quick
    models: ["quick-*"]
    steps:
      - setWeight: 50
      - pause: {duration: 1s}
  - name: held
    models: ["held-*"]
    steps:
      - setWeight: 10
      - pause: {duration: 10m}
"""
PAUSE_SECONDS = 1.0


class Receiver:
    """tests/webhook_receiver.py as a process on `port`, recording into `log`."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.log = root, port, root / "received.jsonl"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, hang: bool = False) -> Receiver:
        args = [sys.executable, "-m", "tests.webhook_receiver", "--port", str(self.port)]
        args += ["--log", str(self.log)]
        self.process = subprocess.Popen([*args, *(["--hang"] if hang else [])])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # listening once a connection is accepted
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("the webhook receiver did not start")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def received(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    running = Receiver(tmp_path, free_port())
    yield running
    running.stop()


@pytest.fixture
def start_app(
    make_settings: Callable[..., Any], start_client: StartClient, tmp_path: Path, receiver: Receiver
) -> Callable[..., Any]:
    async def start(**env: Any) -> TestClient[Any, Any]:
        policies = tmp_path / "policies.yaml"
        policies.write_text(POLICIES)
        webhooks = [
            {"name": "ops", "url": f"http://127.0.0.1:{receiver.port}/ops"},
            {"name": "chat", "url": f"http://127.0.0.1:{receiver.port}/slack", "format": "slack",
             "events": ["promoted", "rolled_back"]},
        ]
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'aegis.db'}",
            AEGIS_POLICIES=policies, AEGIS_ROLLOUT_TICK_SECONDS=0.1, AEGIS_XDS_VALIDATE="false",
            AEGIS_NOTIFY_WEBHOOKS=json.dumps(webhooks), AEGIS_NOTIFY_SIGNING_KEY=SIGNING_KEY, **env,
        )
        return await start_client(settings)

    return start


async def roll_out(client: TestClient[Any, Any], model: str) -> None:
    for version in ("1", "2"):
        form = upload_form({"model_name": model, "version": version}, f"{model} {version}".encode())
        response = await client.post("/v1/registry/register", data=form, headers=auth("admin"))
        assert response.status == 201, await response.text()
    for version, stage in (("1", "prod"), ("2", "canary")):
        response = await client.post(f"/v1/registry/{model}/{version}/promote", json={"stage": stage},
                                     headers=auth("operator"))
        assert response.status == 200, await response.text()


async def rollout(client: TestClient[Any, Any], model: str) -> dict[str, Any]:
    response = await client.get(f"/v1/rollouts/{model}", headers=auth("viewer"))
    document: dict[str, Any] = await response.json()
    return document


async def wait_for(condition: Callable[[], Any], *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} not within {seconds} s")


async def command(client: TestClient[Any, Any], model: str, verb: str, reason: str) -> None:
    response = await client.post(
        f"/v1/rollouts/{model}/{verb}", json={"reason": reason}, headers=auth("operator")
    )
    assert response.status == 200, await response.text()


def events(received: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in received if r["path"] == path]


async def test_each_rollout_event_reaches_the_webhook_once_and_signed(
    start_app: Callable[..., Any], receiver: Receiver
) -> None:
    receiver.start()
    client = await start_app()

    await roll_out(client, "quick-a")

    async def quick_done() -> bool:
        return bool((await rollout(client, "quick-a"))["phase"] == "succeeded")

    await wait_for(quick_done, seconds=15, what="the quick rollout's promotion")
    await roll_out(client, "held-b")

    async def held_at_step() -> bool:
        return bool((await rollout(client, "held-b"))["step"] == 2)  # weight 10 applied: in the pause

    await wait_for(held_at_step, seconds=10, what="the held rollout's pause")
    await command(client, "held-b", "pause", "looking at the dashboards")
    await command(client, "held-b", "resume", "looks fine")
    await command(client, "held-b", "abort", "p99 regressed for EU users")

    expected = 3 + 5 + 2  # quick: started, step, promoted; held: + paused, resumed, rolled_back; chat: 2

    async def all_received() -> bool:
        return len(receiver.received()) >= expected

    await wait_for(all_received, seconds=10, what=f"{expected} deliveries")
    await asyncio.sleep(0.5)  # anything sent twice would arrive by now
    received = receiver.received()
    assert len(received) == expected, [r["body"] for r in received]

    for record in received:
        headers = {k.lower(): v for k, v in record["headers"].items()}
        digest = hmac.new(SIGNING_KEY.encode(), record["body"].encode(), hashlib.sha256).hexdigest()
        assert headers["x-aegis-signature"] == f"sha256={digest}"
        assert headers["content-type"] == "application/json"
    ops = events(received, "/ops")
    assert len({event["id"] for event in ops}) == len(ops) == 8
    by_model = {
        model: [(e["event"], e["canary_weight"]) for e in ops if e["model_name"] == model]
        for model in ("quick-a", "held-b")
    }
    assert by_model == {
        "quick-a": [("started", 0), ("step", 50), ("promoted", 100)],
        "held-b": [("started", 0), ("step", 10), ("paused", 10), ("resumed", 10), ("rolled_back", 0)],
    }
    rolled_back = ops[-1]
    assert (rolled_back["reason"], rolled_back["actor"], rolled_back["step"]) == (
        "p99 regressed for EU users", "operator", 2
    )
    chat = [event["text"] for event in events(received, "/slack")]
    assert chat[0].startswith("*quick-a*: canary promoted (2 over 1")
    assert chat[1].splitlines() == [
        "*held-b*: canary rolled back (2 over 1, step 2, policy held)", "> p99 regressed for EU users"
    ]


async def test_a_stalled_receiver_is_retried_in_the_background_and_the_rollout_keeps_its_pace(
    start_app: Callable[..., Any], receiver: Receiver
) -> None:
    receiver.start(hang=True)  # accepts and never answers: each attempt waits for its 5 s timeout
    client = await start_app(AEGIS_NOTIFY_RETRY_SECONDS=0.2, AEGIS_NOTIFY_MAX_ATTEMPTS=4)

    began = time.monotonic()
    await roll_out(client, "quick-c")

    async def done() -> bool:
        return bool((await rollout(client, "quick-c"))["phase"] == "succeeded")

    await wait_for(done, seconds=15, what="the promotion")
    took = time.monotonic() - began
    # Its one timed pause and a few ticks; a sender in the loop would add 5 s per event and webhook.
    assert took < PAUSE_SECONDS + 2.5, took
    assert receiver.received() == []

    receiver.stop()  # the receiver comes back: the retries deliver what waited
    receiver.start()

    async def delivered() -> bool:
        return len(receiver.received()) >= 4

    await wait_for(delivered, seconds=15, what="the retried deliveries")
    await asyncio.sleep(0.5)
    ops = events(receiver.received(), "/ops")
    assert [e["event"] for e in ops] == ["started", "step", "promoted"]
    assert len(events(receiver.received(), "/slack")) == 1
    metrics = await (await client.get("/metrics")).text()
    failures = [line for line in metrics.splitlines()
                if line.startswith("aegis_notification_failures_total{")]
    assert failures and all(float(line.rsplit(" ", 1)[1]) >= 1 for line in failures), failures
    assert 'aegis_notifications_delivered_total{webhook="ops"} 3.0' in metrics
    print(f"\n[notify] rollout with a stalled receiver: {took:.2f} s (pause {PAUSE_SECONDS} s); {failures}")
