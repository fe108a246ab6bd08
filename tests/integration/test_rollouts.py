"""The rollout engine against the running app, a real Prometheus and a metrics exporter we control."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import TOKENS, auth
from tests.integration.conftest import Register, StartClient
from tests.observability_processes import Prometheus, free_port

POLICY = """
policies:
  - name: quick
    models: ["m*"]
    steps:
      - setWeight: 20
      - pause: {duration: 1s}
      - setWeight: 50
      - pause: {duration: 1s}
    analysis:
      interval: 1s
      window: 2s
      failureLimit: 1
      inconclusiveLimit: 50
      consecutiveErrorLimit: 3
      minRequests: 0
      metrics:
        - name: error-rate
          query: 'max(canary_error_rate{model="{{ model }}",version="{{ canary_version }}"})'
          thresholdRange: {max: 0.05}
  - name: manual
    models: ["held-*"]
    steps:
      - setWeight: 10
      - pause: {}
"""


class Exporter:
    """A /metrics page whose values the test sets: the canary's error rate per model and version."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lines = [
                    f'canary_error_rate{{model="{m}",version="{v}"}} {value}'
                    for (m, v), value in sorted(exporter.values.items())
                ]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    running = Exporter()
    yield running
    running.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, exporter: Exporter) -> Iterator[Prometheus]:
    instance = Prometheus(
        tmp_path_factory.mktemp("prometheus"),
        scrape_targets=[("exporter", f"127.0.0.1:{exporter.port}", "/metrics")],
    ).start()
    instance.wait_for_up("exporter")
    yield instance
    instance.stop()


@pytest.fixture
async def client(
    make_settings: Any, database_url: str, start_client: StartClient, prometheus: Prometheus, tmp_path: Path
) -> TestClient[Any, Any]:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(POLICY)
    settings = make_settings(
        database_url,
        AEGIS_PROMETHEUS_URL=prometheus.url,
        AEGIS_POLICIES=policy_file,
        AEGIS_ROLLOUT_TICK_SECONDS=0.2,
        AEGIS_XDS_VALIDATE="false",
        AEGIS_XDS_HOLD_SECONDS=0.2,
    )
    return await start_client(settings)


async def prepare(client: TestClient[Any, Any], register: Register, model: str) -> None:
    for version in ("1", "2"):
        await register(model, version, f"{model} weights {version}".encode())
    await client.post(f"/v1/registry/{model}/1/promote", json={"stage": "prod"}, headers=auth("operator"))


async def wait_phase(client: TestClient[Any, Any], model: str, phases: set[str], seconds: float = 40) -> Any:
    document: Any = None
    for _ in range(int(seconds / 0.2)):
        response = await client.get(f"/v1/rollouts/{model}", headers=auth("viewer"))
        if response.status == 200:
            document = await response.json()
            if document["phase"] in phases:
                return document
        await asyncio.sleep(0.2)
    raise AssertionError(f"rollout of {model} never reached {phases}: {document}")


async def stages(client: TestClient[Any, Any], model: str) -> dict[str, str]:
    document = await (await client.get(f"/v1/registry/{model}", headers=auth("viewer"))).json()
    return {v["version"]: v["stage"] for v in document["versions"]}


async def test_a_healthy_canary_walks_its_steps_and_is_promoted(
    client: TestClient[Any, Any], register: Register, exporter: Exporter
) -> None:
    exporter.values[("m-good", "2")] = 0.0
    await prepare(client, register, "m-good")
    promoted = await client.post(
        "/v1/registry/m-good/2/promote", json={"stage": "canary"}, headers=auth("operator")
    )
    assert promoted.status == 200
    document = await wait_phase(client, "m-good", {"succeeded", "rolled_back", "paused"})
    assert document["phase"] == "succeeded", document
    assert await stages(client, "m-good") == {"1": "archived", "2": "prod"}
    reasons = [d["reason"] for d in document["decisions"]]
    assert any("canary weight 0 -> 20" in r for r in reasons)
    assert any("canary weight 20 -> 50" in r for r in reasons)
    assert any("analysis passed" in r for r in reasons)
    version = await (await client.get("/v1/registry/m-good/2", headers=auth("viewer"))).json()
    last = version["metadata"]["_registry"]["promotion_history"][-1]
    assert (last["to_stage"], last["actor"]) == ("prod", "aegis-rollout")
    traffic = await (await client.get("/v1/traffic/m-good", headers=auth("viewer"))).json()
    assert traffic["weights"] == {"2": 100}
    assert traffic["owner"] is None


async def test_a_failing_canary_is_rolled_back_with_the_reason(
    client: TestClient[Any, Any], register: Register, exporter: Exporter
) -> None:
    exporter.values[("m-bad", "2")] = 0.5
    await prepare(client, register, "m-bad")
    await client.post("/v1/registry/m-bad/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    document = await wait_phase(client, "m-bad", {"succeeded", "rolled_back"})
    assert document["phase"] == "rolled_back"
    assert "error-rate 0.5 > max 0.05: failures 2 > failureLimit 1" in document["message"]
    failing = next(d for d in document["decisions"] if "failures 2" in d["reason"])
    assert failing["verdicts"][0]["value"] == 0.5
    assert await stages(client, "m-bad") == {"1": "prod", "2": "staging"}
    version = await (await client.get("/v1/registry/m-bad/2", headers=auth("viewer"))).json()
    last = version["metadata"]["_registry"]["promotion_history"][-1]
    assert (last["from_stage"], last["to_stage"], last["actor"]) == ("canary", "staging", "aegis-rollout")
    assert "failureLimit" in last["reason"]
    traffic = await (await client.get("/v1/traffic/m-bad", headers=auth("viewer"))).json()
    assert traffic["weights"] == {"1": 100}


async def test_an_unreachable_prometheus_pauses_and_never_promotes(
    make_settings: Any, database_url: str, start_client: StartClient, register: Register, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(POLICY)
    client = await start_client(
        make_settings(
            database_url,
            AEGIS_PROMETHEUS_URL=f"http://127.0.0.1:{free_port()}",
            AEGIS_POLICIES=policy_file,
            AEGIS_ROLLOUT_TICK_SECONDS=0.2,
            AEGIS_XDS_VALIDATE="false",
        )
    )
    await prepare(client, register, "m-dark")
    await client.post("/v1/registry/m-dark/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    document = await wait_phase(client, "m-dark", {"paused", "succeeded", "rolled_back"})
    assert document["phase"] == "paused"
    assert "consecutiveErrorLimit 3" in document["message"]
    assert "unreachable" in document["message"]
    assert await stages(client, "m-dark") == {"1": "prod", "2": "canary"}


async def test_a_policy_rollout_needs_a_prod_version(
    client: TestClient[Any, Any], register: Register
) -> None:
    await register("m-new", "1", b"first")
    response = await client.post(
        "/v1/registry/m-new/1/promote", json={"stage": "canary"}, headers=auth("operator")
    )
    assert response.status == 409
    assert "no prod version" in (await response.json())["error"]["message"]
    assert await stages(client, "m-new") == {"1": "staging"}


async def test_operators_pause_resume_promote_and_abort(
    client: TestClient[Any, Any], register: Register
) -> None:
    await prepare(client, register, "held-a")
    await client.post("/v1/registry/held-a/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    document = await wait_phase(client, "held-a", {"paused"})
    assert "waiting for an operator to promote" in document["message"]
    manual = await client.put(
        "/v1/traffic/held-a", json={"weights": {"1": 0, "2": 100}}, headers=auth("operator")
    )
    assert manual.status == 409
    assert (await client.post("/v1/rollouts/held-a/promote", headers=auth("viewer"))).status == 403
    promoted = await client.post("/v1/rollouts/held-a/promote", headers=auth("operator"))
    assert (await promoted.json())["phase"] == "succeeded"
    assert await stages(client, "held-a") == {"1": "archived", "2": "prod"}

    await prepare(client, register, "held-b")
    await client.post("/v1/registry/held-b/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "held-b", {"paused"})
    aborted = await client.post(
        "/v1/rollouts/held-b/abort", json={"reason": "bad idea"}, headers=auth("operator")
    )
    document = await aborted.json()
    assert (document["phase"], document["message"]) == ("rolled_back", "bad idea")
    assert await stages(client, "held-b") == {"1": "prod", "2": "staging"}
    assert (await client.post("/v1/rollouts/held-b/abort", headers=auth("operator"))).status == 404
    assert (await client.post("/v1/rollouts/held-b/explode", headers=auth("operator"))).status == 404


async def test_a_firing_alert_rolls_back_at_once_and_intake_is_idempotent(
    client: TestClient[Any, Any], register: Register
) -> None:
    await prepare(client, register, "held-c")
    await client.post("/v1/registry/held-c/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "held-c", {"paused"})

    def webhook(status: str, labels: dict[str, str], fingerprint: str) -> dict[str, Any]:
        alert = {
            "status": status,
            "labels": {"alertname": "AegisCanaryHighErrorRate", **labels},
            "annotations": {"summary": "20% of requests fail"},
            "startsAt": "2026-11-26T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": fingerprint,
        }
        return {"version": "4", "status": status, "receiver": "aegis", "alerts": [alert]}

    other = await client.post(
        "/v1/alerts/alertmanager", json=webhook("firing", {"model": "else"}, "f0"), headers=auth("operator")
    )
    assert (await other.json())["outcomes"][0]["action"] == "recorded_no_active_rollout"
    assert (
        await client.post(
            "/v1/alerts/alertmanager",
            json=webhook("firing", {"model": "held-c"}, "f1"),
            headers=auth("viewer"),
        )
    ).status == 403
    fired = await client.post(
        "/v1/alerts/alertmanager",
        json=webhook("firing", {"model": "held-c", "version": "2"}, "f1"),
        headers=auth("operator"),
    )
    assert fired.status == 200
    assert (await fired.json())["outcomes"][0]["action"] == "rollback"
    document = await (await client.get("/v1/rollouts/held-c", headers=auth("viewer"))).json()
    assert document["phase"] == "rolled_back"
    assert document["message"] == "alert AegisCanaryHighErrorRate firing: 20% of requests fail"
    assert await stages(client, "held-c") == {"1": "prod", "2": "staging"}
    again = await client.post(
        "/v1/alerts/alertmanager",
        json=webhook("firing", {"model": "held-c", "version": "2"}, "f1"),
        headers=auth("operator"),
    )
    assert (await again.json())["outcomes"][0]["action"] == "duplicate"
    resolved = await client.post(
        "/v1/alerts/alertmanager",
        json=webhook("resolved", {"model": "held-c"}, "f1"),
        headers=auth("operator"),
    )
    assert (await resolved.json())["outcomes"][0]["action"] == "recorded_resolved"
    malformed = await client.post("/v1/alerts/alertmanager", json={"alerts": "no"}, headers=auth("operator"))
    assert malformed.status == 422
    assert "alerts: " in (await malformed.json())["error"]["message"]
    metrics = await (await client.get("/metrics")).text()
    assert 'aegis_alerts_received_total{action="rollback",status="firing"} 1.0' in metrics


async def test_a_rollout_resumes_after_a_restart(
    client: TestClient[Any, Any],
    register: Register,
    make_settings: Any,
    database_url: str,
    start_client: StartClient,
    prometheus: Prometheus,
    tmp_path: Path,
) -> None:
    await prepare(client, register, "held-d")
    await client.post("/v1/registry/held-d/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    before = await wait_phase(client, "held-d", {"paused"})
    await client.close()
    restarted = await start_client(
        make_settings(
            database_url,
            AEGIS_PROMETHEUS_URL=prometheus.url,
            AEGIS_POLICIES=tmp_path / "policies.yaml",
            AEGIS_ROLLOUT_TICK_SECONDS=0.2,
            AEGIS_XDS_VALIDATE="false",
        )
    )
    after = await (await restarted.get("/v1/rollouts/held-d", headers=auth("viewer"))).json()
    assert (after["phase"], after["step"], after["canary_weight"]) == (before["phase"], before["step"], 10)
    traffic = await (await restarted.get("/v1/traffic/held-d", headers=auth("viewer"))).json()
    assert traffic["weights"] == {"1": 90, "2": 10}
    done = await restarted.post("/v1/rollouts/held-d/promote", headers=auth("operator"))
    assert (await done.json())["phase"] == "succeeded"


async def test_policies_are_listed_and_a_broken_edit_is_reported_while_they_stay(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    document = await (await client.get("/v1/policies", headers=auth("viewer"))).json()
    assert [p["name"] for p in document["policies"]] == ["quick", "manual"]
    assert document["errors"] == []
    (tmp_path / "policies.yaml").write_text(POLICY.replace("setWeight: 20", "setWeigth: 20"))
    for _ in range(100):
        document = await (await client.get("/v1/policies", headers=auth("viewer"))).json()
        if document["errors"]:
            break
        await asyncio.sleep(0.1)
    assert "setWeight" in document["errors"][0]["message"]
    assert document["errors"][0]["line"] == 6
    assert [p["name"] for p in document["policies"]] == ["quick", "manual"]
    metrics = await (await client.get("/metrics")).text()
    assert "aegis_policy_errors 1.0" in metrics
    assert "aegis_policies_loaded 2.0" in metrics


async def test_the_rollout_cli_shows_and_steers_rollouts(
    client: TestClient[Any, Any], register: Register
) -> None:
    await prepare(client, register, "held-e")
    await client.post("/v1/registry/held-e/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "held-e", {"paused"})
    env = {**os.environ, "AEGIS_URL": str(client.make_url("")).rstrip("/"), "AEGIS_TOKEN": TOKENS["operator"]}

    def aegis(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controlplane.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    listing = await asyncio.to_thread(aegis, "rollout", "status")
    assert listing.returncode == 0
    assert "held-e" in listing.stdout and "paused" in listing.stdout
    detail = await asyncio.to_thread(aegis, "rollout", "status", "held-e", "--json")
    assert json.loads(detail.stdout)["canary_weight"] == 10
    missing = await asyncio.to_thread(aegis, "rollout", "abort", "nope")
    assert missing.returncode == 1 and "no active rollout" in missing.stderr
    done = await asyncio.to_thread(aegis, "rollout", "promote", "held-e", "--full")
    assert done.returncode == 0 and "succeeded" in done.stdout


async def test_a_rollout_whose_policy_disappears_holds_and_can_still_be_aborted(
    client: TestClient[Any, Any], register: Register, tmp_path: Path
) -> None:
    await prepare(client, register, "m-orphan")  # no exporter value: analysis says "no data", holding
    await client.post("/v1/registry/m-orphan/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "m-orphan", {"progressing"})
    (tmp_path / "policies.yaml").write_text(POLICY.split("  - name: manual")[0].replace("quick", "renamed"))
    document = await wait_phase(client, "m-orphan", {"paused"})
    assert document["message"] == "policy 'quick' is no longer loaded; fix the policy files, then resume"
    aborted = await client.post("/v1/rollouts/m-orphan/abort", headers=auth("operator"))
    assert (await aborted.json())["phase"] == "rolled_back"
    assert await stages(client, "m-orphan") == {"1": "prod", "2": "staging"}
