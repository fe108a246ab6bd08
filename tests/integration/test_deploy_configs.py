"""deploy/: the configs pass Prometheus's and Alertmanager's own checks, and alerts reach Aegis's webhook.

Alertmanager -> webhook is checked with the real Alertmanager; the whole alert path (model
server series -> the deploy rules in a real Prometheus -> Alertmanager -> webhook) too.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controlplane.demo.processes import ALERTMANAGER_BINARIES
from modelserver.metrics import ModelMetrics
from tests.observability_processes import Alertmanager, Prometheus, require_binary
from tests.processes import free_port, stop, wait_for_http

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOKEN = "alertmanager-token-dddddddd"

def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """promtool or amtool from the Debian packages `./run test` installs; missing is a failure."""
    return subprocess.run(
        (require_binary(tool), *args), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_prometheus_config_and_its_rule_files_are_valid() -> None:
    result = run_tool("promtool", "check", "config", "deploy/prometheus.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout  # the glob picked up the canary rules, and only them


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    test_files = sorted(str(path.relative_to(ROOT)) for path in (DEPLOY / "rules" / "tests").glob("*.yml"))
    assert test_files, "no promtool rule tests in deploy/rules/tests"

    result = run_tool("promtool", "test", "rules", *test_files)

    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_is_valid_and_routes_model_alerts_to_aegis() -> None:
    check = run_tool("amtool", "check-config", "deploy/alertmanager.yml")
    assert check.returncode == 0, check.stdout + check.stderr

    route = run_tool(
        "amtool", "config", "routes", "test", "--config.file=deploy/alertmanager.yml",
        "alertname=AegisCanaryHighErrorRate", "model=fraud", "version=2.0",
    )
    assert route.returncode == 0, route.stdout + route.stderr
    assert route.stdout.strip() == "aegis"


class WebhookReceiver:
    """Aegis's side of the webhook, reduced to recording what arrives (and with which Authorization)."""

    def __init__(self) -> None:
        self.deliveries: asyncio.Queue[tuple[str | None, dict[str, Any]]] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.Response:
        await self.deliveries.put((request.headers.get("Authorization"), await request.json()))
        return web.json_response({"accepted": True})

    async def next(self, *, within: float = 15) -> tuple[str | None, dict[str, Any]]:
        """The next delivery: (Authorization header, JSON body); fails after `within` seconds."""
        return await asyncio.wait_for(self.deliveries.get(), within)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookReceiver, str]]:
    webhook = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/v1/alerts/alertmanager", webhook.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield webhook, str(server.make_url("/v1/alerts/alertmanager"))


StartAlertmanager = Callable[[str], Awaitable[Alertmanager]]


@pytest.fixture
async def start_alertmanager(tmp_path: Path) -> AsyncIterator[StartAlertmanager]:
    started: list[Alertmanager] = []

    async def start(webhook_url: str) -> Alertmanager:
        alertmanager = Alertmanager(tmp_path / "alertmanager", webhook_url=webhook_url, bearer_token=TOKEN)
        started.append(alertmanager)
        return await asyncio.to_thread(alertmanager.start)

    yield start
    for alertmanager in started:
        await asyncio.to_thread(alertmanager.stop)


def iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def test_alert_posted_to_alertmanager_reaches_the_webhook_with_labels_and_bearer_token(
    receiver: tuple[WebhookReceiver, str], start_alertmanager: StartAlertmanager
) -> None:
    webhook, webhook_url = receiver
    alertmanager = await start_alertmanager(webhook_url)
    group = {"alertname": "AegisCanaryHighErrorRate", "model": "fraud", "version": "2.0"}
    labels = {**group, "severity": "critical"}
    alert = {"labels": labels, "annotations": {"summary": "fraud 2.0: 50% of requests fail with 5xx"},
             "startsAt": iso_now(), "generatorURL": "http://prometheus.invalid/graph"}

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{alertmanager.url}/api/v2/alerts", json=[alert]) as response:
            assert response.status == 200, await response.text()
        authorization, firing = await webhook.next()

        assert authorization == f"Bearer {TOKEN}"
        assert firing["version"] == "4"
        assert firing["status"] == "firing"
        assert firing["receiver"] == "aegis"
        assert firing["groupLabels"] == group  # deploy/alertmanager.yml groups the same way
        [delivered] = firing["alerts"]
        assert delivered["status"] == "firing"
        assert delivered["labels"] == labels
        assert delivered["annotations"] == alert["annotations"]
        assert re.fullmatch(r"[0-9a-f]{16}", delivered["fingerprint"])
        assert delivered["endsAt"] == "0001-01-01T00:00:00Z"

        # Resolving re-posts the alert with an end time: the same (fingerprint, startsAt) comes back resolved.
        resolved_alert = {**alert, "startsAt": delivered["startsAt"], "endsAt": iso_now()}
        async with session.post(f"{alertmanager.url}/api/v2/alerts", json=[resolved_alert]) as response:
            assert response.status == 200, await response.text()
        authorization, resolved = await webhook.next()

    assert authorization == f"Bearer {TOKEN}"
    assert resolved["status"] == "resolved"
    [resolved_delivered] = resolved["alerts"]
    assert resolved_delivered["status"] == "resolved"
    assert (resolved_delivered["fingerprint"], resolved_delivered["startsAt"]) == (
        delivered["fingerprint"], delivered["startsAt"])


async def test_failing_model_server_fires_the_deploy_rule_with_model_and_version(
    tmp_path: Path, receiver: tuple[WebhookReceiver, str], start_alertmanager: StartAlertmanager
) -> None:
    """The whole alert path with deploy/rules: model-server series, Prometheus, Alertmanager, webhook."""
    webhook, webhook_url = receiver
    healthy = ModelMetrics("fraud", "1.0")
    failing = ModelMetrics("fraud", "2.0")

    async def metrics(request: web.Request) -> web.Response:
        # Ten requests between scrapes: 1.0 answers them all; 2.0 fails half.
        for index in range(10):
            healthy.observe_request(200, 0.01)
            failing.observe_request(500 if index % 2 else 200, 0.01)
        body = generate_latest(healthy.registry) + generate_latest(failing.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    async with TestServer(app, host="127.0.0.1") as model_servers:
        alertmanager = await start_alertmanager(webhook_url)
        prometheus = Prometheus(
            tmp_path / "prometheus",
            scrape_targets=[("model-servers", f"127.0.0.1:{model_servers.port}", "/metrics")],
            rule_files=[DEPLOY / "rules" / "aegis-canary.rules.yml"],
            alertmanager_url=alertmanager.url,
        )
        try:
            await asyncio.to_thread(prometheus.start)
            authorization, firing = await webhook.next(within=30)  # first scrape ~6 s, then ~1 s
            await asyncio.sleep(2)  # two more evaluations and group intervals: room for a wrong alert
        finally:
            await asyncio.to_thread(prometheus.stop)

    assert authorization == f"Bearer {TOKEN}"
    assert firing["status"] == "firing"
    assert [alert["labels"] for alert in firing["alerts"]] == [
        {"alertname": "AegisCanaryHighErrorRate", "model": "fraud", "version": "2.0", "severity": "critical"}
    ], json.dumps(firing, indent=1)
    assert firing["alerts"][0]["annotations"]["summary"] == "fraud 2.0: 50% of requests fail with 5xx"
    later = [webhook.deliveries.get_nowait()[1] for _ in range(webhook.deliveries.qsize())]
    versions = {alert["labels"]["version"] for delivery in later for alert in delivery["alerts"]}
    assert versions <= {"2.0"}, f"version 1.0 is healthy, yet alerts named {versions}"


async def test_the_shipped_alertmanager_config_works_outside_compose_with_its_token_beside_it(
    tmp_path: Path, receiver: tuple[WebhookReceiver, str]
) -> None:
    """deploy/alertmanager.yml as the README runs it: the token file made beside it, any working directory."""
    webhook, webhook_url = receiver
    shipped = (DEPLOY / "alertmanager.yml").read_text()
    aegis_url = "http://127.0.0.1:8080/v1/alerts/alertmanager"
    assert aegis_url in shipped
    config_dir = tmp_path / "deploy"
    config_dir.mkdir()
    (config_dir / "alertmanager.yml").write_text(shipped.replace(aegis_url, webhook_url))  # only the URL
    (config_dir / "alertmanager-token").write_text(TOKEN + "\n")  # as the README makes it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    process = await asyncio.to_thread(
        start_in, elsewhere, require_binary(*ALERTMANAGER_BINARIES),
        f"--config.file={config_dir / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
    )
    try:
        await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/-/ready", process=process)
        alert = {"labels": {"alertname": "AegisCanaryHighErrorRate", "model": "fraud", "version": "2.0"},
                 "startsAt": iso_now()}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/api/v2/alerts", json=[alert]) as response,
        ):
            assert response.status == 200, await response.text()
        authorization, firing = await webhook.next(within=20)
    finally:
        await asyncio.to_thread(stop, process)
    assert authorization == f"Bearer {TOKEN}"
    assert firing["alerts"][0]["labels"]["model"] == "fraud"


def start_in(folder: Path, *command: str) -> subprocess.Popen[bytes]:
    """A process started in `folder`, its output in folder/output.log."""
    with (folder / "output.log").open("ab") as log:
        return subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
