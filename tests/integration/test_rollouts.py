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

from tests.conftest import API_TOKENS, TOKENS, auth
from tests.integration.conftest import Register, StartClient, upload_form
from tests.integration.test_xds_protocol import poll
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
  - name: timed
    models: ["timed-*"]
    steps:
      - setWeight: 10
      - pause: {duration: 4s}
      - setWeight: 30
      - pause: {}
"""
ALICE = "alice-token-dddddddd"


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
        # A second operator with a name of her own, for the history of who did what.
        AEGIS_API_TOKENS=f"{API_TOKENS},operator:alice:{ALICE}",
    )
    return await start_client(settings)


def aegis(
    client: TestClient[Any, Any], *args: str, token: str = TOKENS["operator"]
) -> subprocess.CompletedProcess[str]:
    """The CLI as a subprocess against the running app (a real socket)."""
    env = {**os.environ, "AEGIS_URL": str(client.make_url("")).rstrip("/"), "AEGIS_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def announce(client: TestClient[Any, Any], model: str, version: str, port: int) -> None:
    body = {"model_name": model, "version": version, "address": "127.0.0.1", "port": port, "ttl_seconds": 300}
    assert (await client.post("/v1/endpoints", json=body, headers=auth("operator"))).status in (200, 201)


class SimulatedEnvoy:
    """An Envoy node over REST xDS: polls RTDS, CDS and RDS, acknowledging what it was served."""

    def __init__(self, client: TestClient[Any, Any], node_id: str = "envoy-1") -> None:
        self.client = client
        self.node_id = node_id
        self.versions = {"clusters": "", "routes": "", "runtime": ""}

    async def sync(self, rounds: int = 2) -> None:
        for _ in range(rounds):
            for kind in self.versions:
                status, document = await poll(self.client, kind, self.versions[kind], node=self.node_id)
                if status == 200:
                    self.versions[kind] = document["version_info"]


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
    assert (await promoted.json())["rollout"] == {"started": True, "policy": "quick", "reason": ""}
    waiting = asyncio.create_task(asyncio.to_thread(aegis, client, "rollout", "status", "m-good", "--wait"))
    document = await wait_phase(client, "m-good", {"succeeded", "rolled_back", "paused"})
    assert document["phase"] == "succeeded", document
    waited = await asyncio.wait_for(waiting, 60)
    assert waited.returncode == 0, waited.stderr  # CI goes on
    assert "succeeded" in waited.stdout
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
    waiting = asyncio.create_task(
        asyncio.to_thread(aegis, client, "rollout", "status", "m-bad", "--wait", "--timeout", "60")
    )
    document = await wait_phase(client, "m-bad", {"succeeded", "rolled_back"})
    assert document["phase"] == "rolled_back"
    waited = await asyncio.wait_for(waiting, 90)
    assert waited.returncode == 1, waited.stderr  # CI fails the deploy
    assert "failureLimit" in waited.stdout
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
    make_settings: Any, database_url: str, start_client: StartClient, tmp_path: Path
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
    # This app alone on its database: with another one it would share the work with a leader.
    async def register(model_name: str, version: str, artifact: bytes) -> Any:
        form = upload_form({"model_name": model_name, "version": version}, artifact)
        return await client.post("/v1/registry/register", data=form, headers=auth("admin"))

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
    paused = await restarted.post(
        "/v1/rollouts/held-d/pause", json={"reason": "hold on"}, headers=auth("operator")
    )
    assert paused.status == 200
    done = await restarted.post("/v1/rollouts/held-d/promote", headers=auth("operator"))
    assert (await done.json())["phase"] == "succeeded"
    # The history and who did what are in the database, not in the process that saw them.
    await restarted.close()
    again = await start_client(
        make_settings(
            database_url,
            AEGIS_PROMETHEUS_URL=prometheus.url,
            AEGIS_POLICIES=tmp_path / "policies.yaml",
            AEGIS_XDS_VALIDATE="false",
        )
    )
    history = await (await again.get("/v1/rollouts/held-d/history", headers=auth("viewer"))).json()
    assert [r["phase"] for r in history["rollouts"]] == ["succeeded"]
    past = await (
        await again.get(f"/v1/rollouts/held-d/history/{history['rollouts'][0]['id']}", headers=auth("viewer"))
    ).json()
    assert ("hold on", "operator") in [(d["reason"], d.get("actor")) for d in past["decisions"]]


async def test_policies_are_listed_and_a_broken_edit_is_reported_while_they_stay(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    document = await (await client.get("/v1/policies", headers=auth("viewer"))).json()
    assert [p["name"] for p in document["policies"]] == ["quick", "manual", "timed"]
    assert document["errors"] == []
    (tmp_path / "policies.yaml").write_text(POLICY.replace("setWeight: 20", "setWeigth: 20"))
    for _ in range(100):
        document = await (await client.get("/v1/policies", headers=auth("viewer"))).json()
        if document["errors"]:
            break
        await asyncio.sleep(0.1)
    assert "setWeight" in document["errors"][0]["message"]
    assert document["errors"][0]["line"] == 6
    assert [p["name"] for p in document["policies"]] == ["quick", "manual", "timed"]
    metrics = await (await client.get("/metrics")).text()
    assert "aegis_policy_errors 1.0" in metrics
    assert "aegis_policies_loaded 3.0" in metrics


async def test_the_rollout_cli_shows_and_steers_rollouts(
    client: TestClient[Any, Any], register: Register
) -> None:
    await prepare(client, register, "held-e")
    await client.post("/v1/registry/held-e/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "held-e", {"paused"})

    listing = await asyncio.to_thread(aegis, client, "rollout", "status")
    assert listing.returncode == 0
    assert "held-e" in listing.stdout and "paused" in listing.stdout
    detail = await asyncio.to_thread(aegis, client, "rollout", "status", "held-e", "--json")
    assert json.loads(detail.stdout)["canary_weight"] == 10
    # A manual gate needs a person: --wait says so with exit code 2 instead of hanging.
    gated = await asyncio.to_thread(aegis, client, "rollout", "status", "held-e", "--wait")
    assert gated.returncode == 2
    assert "paused" in gated.stderr and "aegis rollout resume|promote held-e" in gated.stderr
    missing = await asyncio.to_thread(aegis, client, "rollout", "abort", "nope")
    assert missing.returncode == 1 and "no active rollout" in missing.stderr
    done = await asyncio.to_thread(aegis, client, "rollout", "promote", "held-e", "--full")
    assert done.returncode == 0 and "succeeded" in done.stdout
    assert "finished (succeeded) at step 2/2" in done.stdout and "waiting for Envoy" not in done.stdout


async def test_a_rollout_whose_policy_disappears_holds_and_can_still_be_aborted(
    client: TestClient[Any, Any], register: Register, tmp_path: Path
) -> None:
    await prepare(client, register, "m-orphan")  # no exporter value: analysis says "no data", holding
    await client.post("/v1/registry/m-orphan/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "m-orphan", {"progressing"})
    waited = await asyncio.to_thread(
        aegis, client, "rollout", "status", "m-orphan", "--wait", "--timeout", "1"
    )
    assert waited.returncode == 2
    assert "still progressing after 1s" in waited.stderr
    (tmp_path / "policies.yaml").write_text(POLICY.split("  - name: manual")[0].replace("quick", "renamed"))
    document = await wait_phase(client, "m-orphan", {"paused"})
    assert document["message"] == "policy 'quick' is no longer loaded; fix the policy files, then resume"
    aborted = await client.post("/v1/rollouts/m-orphan/abort", headers=auth("operator"))
    assert (await aborted.json())["phase"] == "rolled_back"
    assert await stages(client, "m-orphan") == {"1": "prod", "2": "staging"}


async def test_status_shows_what_envoy_serves_beside_the_desired_weight_and_finished_says_finished(
    client: TestClient[Any, Any], register: Register
) -> None:
    await prepare(client, register, "held-s")
    await announce(client, "held-s", "1", 9101)
    await announce(client, "held-s", "2", 9102)
    envoy = SimulatedEnvoy(client)
    await envoy.sync()
    before_rollout = dict(envoy.versions)
    await client.post("/v1/registry/held-s/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    desired = await (await client.get("/v1/rollouts/held-s", headers=auth("viewer"))).json()
    # The rollout asked for 10%, but Envoy has not taken the new routes: it serves 0%.
    assert (desired["canary_weight"], desired["actual_canary_weight"]) == (10, 0)
    assert desired["acknowledged"] is False
    text = await asyncio.to_thread(aegis, client, "rollout", "status", "held-s")
    assert "canary weight 10% (Envoy serves 0%)  waiting for Envoy" in text.stdout
    document = desired
    for _ in range(100):
        await envoy.sync(rounds=1)
        document = await (await client.get("/v1/rollouts/held-s", headers=auth("viewer"))).json()
        if document["phase"] == "paused":
            break
    served = (document["phase"], document["canary_weight"], document["actual_canary_weight"])
    assert served == ("paused", 10, 10)
    assert document["served_canary_weights"] == [{"canary_weight": 10, "nodes": 1}]
    # A second Envoy, restarted on the routes from before the rollout, has not taken the
    # new ones yet: the nodes differ. (A node that reports no version yet is not counted.)
    newcomer = SimulatedEnvoy(client, "envoy-2")
    newcomer.versions = dict(before_rollout)
    await newcomer.sync(rounds=1)
    document = await (await client.get("/v1/rollouts/held-s", headers=auth("viewer"))).json()
    assert document["actual_canary_weight"] is None
    assert document["served_canary_weights"] == [
        {"canary_weight": 0, "nodes": 1},
        {"canary_weight": 10, "nodes": 1},
    ]
    text = await asyncio.to_thread(aegis, client, "rollout", "status", "held-s")
    assert "(Envoy nodes serve 0% on 1, 10% on 1)" in text.stdout
    await newcomer.sync()
    document = await (await client.get("/v1/rollouts/held-s", headers=auth("viewer"))).json()
    assert document["served_canary_weights"] == [{"canary_weight": 10, "nodes": 2}]

    done = await client.post("/v1/rollouts/held-s/promote", headers=auth("operator"))
    finished = await done.json()
    assert (finished["phase"], finished["finished"], finished["step"], finished["steps"]) == (
        "succeeded", True, 2, 2
    )
    await asyncio.gather(envoy.sync(), newcomer.sync())
    text = await asyncio.to_thread(aegis, client, "rollout", "status", "held-s")
    assert "finished (succeeded) at step 2/2  canary weight 100% (Envoy serves 100%)" in text.stdout
    assert "waiting for Envoy" not in text.stdout and "3/2" not in text.stdout


async def test_a_rollout_ended_in_the_registry_resets_the_canary_weight_metric(
    client: TestClient[Any, Any], register: Register
) -> None:
    await prepare(client, register, "held-r")
    await client.post("/v1/registry/held-r/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "held-r", {"paused"})
    metrics = await (await client.get("/metrics")).text()
    assert 'aegis_rollout_canary_weight{model="held-r"} 10.0' in metrics
    rolled_back = await client.post("/v1/registry/held-r/rollback", headers=auth("operator"))
    assert rolled_back.status == 200
    document = await (await client.get("/v1/rollouts/held-r", headers=auth("viewer"))).json()
    assert (document["phase"], document["canary_weight"]) == ("rolled_back", 0)
    metrics = await (await client.get("/metrics")).text()
    assert 'aegis_rollout_canary_weight{model="held-r"} 0.0' in metrics
    assert 'aegis_rollout_phase{model="held-r",phase="rolled_back"} 1.0' in metrics


async def test_an_operator_pause_freezes_a_timed_pause_and_resume_continues_with_the_time_left(
    client: TestClient[Any, Any], register: Register
) -> None:
    await prepare(client, register, "timed-a")
    await client.post("/v1/registry/timed-a/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    for _ in range(100):  # step 2 is a pause of 4 s
        document = await (await client.get("/v1/rollouts/timed-a", headers=auth("viewer"))).json()
        if document["step"] == 2:
            break
        await asyncio.sleep(0.05)
    paused = await client.post("/v1/rollouts/timed-a/pause", headers=auth("operator"))
    assert (await paused.json())["step"] == 2
    await asyncio.sleep(5)  # longer than the whole pause
    resumed = await (await client.post("/v1/rollouts/timed-a/resume", headers=auth("operator"))).json()
    assert (resumed["phase"], resumed["step"]) == ("progressing", 2)
    await asyncio.sleep(1)  # a few ticks: the pause still has about 3 s left
    document = await (await client.get("/v1/rollouts/timed-a", headers=auth("viewer"))).json()
    assert (document["step"], document["canary_weight"]) == (2, 10), document["message"]
    document = await wait_phase(client, "timed-a", {"paused"})
    assert (document["step"], document["canary_weight"]) == (4, 30)


async def test_every_rollout_is_in_the_history_with_who_commanded_it(
    client: TestClient[Any, Any], register: Register
) -> None:
    await prepare(client, register, "held-h")
    await client.post("/v1/registry/held-h/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "held-h", {"paused"})
    aborted = await asyncio.to_thread(
        aegis, client, "rollout", "abort", "held-h", "--reason", "bad idea", token=ALICE
    )
    assert aborted.returncode == 0, aborted.stderr
    assert "bad idea (by alice)" in aborted.stdout
    document = await (await client.get("/v1/rollouts/held-h", headers=auth("viewer"))).json()
    assert (document["decisions"][0]["reason"], document["decisions"][0]["actor"]) == ("bad idea", "alice")

    # A second rollout of the same model; the first stays reachable, decisions and all.
    await client.post("/v1/registry/held-h/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await wait_phase(client, "held-h", {"paused"})
    assert (await asyncio.to_thread(aegis, client, "rollout", "promote", "held-h", "--full")).returncode == 0
    history = await (await client.get("/v1/rollouts/held-h/history", headers=auth("viewer"))).json()
    assert [(r["phase"], r["started_by"]) for r in history["rollouts"]] == [
        ("succeeded", "operator"),
        ("rolled_back", "operator"),
    ]
    assert history["next_before"] is None
    assert all(r["decision_count"] >= 3 and r["last_decision_at"] for r in history["rollouts"])
    first_id = history["rollouts"][1]["id"]
    page = await (await client.get("/v1/rollouts/held-h/history?limit=1", headers=auth("viewer"))).json()
    assert [r["phase"] for r in page["rollouts"]] == ["succeeded"]
    rest = await (
        await client.get(f"/v1/rollouts/held-h/history?before={page['next_before']}", headers=auth("viewer"))
    ).json()
    assert [r["id"] for r in rest["rollouts"]] == [first_id]
    past = await (await client.get(f"/v1/rollouts/held-h/history/{first_id}", headers=auth("viewer"))).json()
    assert past["phase"] == "rolled_back"
    assert past["decisions"][0]["actor"] == "alice"
    assert past["decisions"][-1]["reason"].startswith("started by operator")
    older = await (
        await client.get(
            f"/v1/rollouts/held-h/history/{first_id}?limit=1&before={past['decisions'][0]['id']}",
            headers=auth("viewer"),
        )
    ).json()
    assert [d["id"] for d in older["decisions"]] == [past["decisions"][1]["id"]]
    for bad, status in (
        ("/history?limit=0", 422),
        ("/history?limit=x", 422),
        ("/history?limit=%C2%B2", 422),  # a superscript two is a digit to str.isdigit
        ("/history?before=99999999999", 422),
        ("/history/99999", 404),
        ("/history/99999999999", 422),
    ):
        response = await client.get(f"/v1/rollouts/held-h{bad}", headers=auth("viewer"))
        assert response.status == status, bad
        assert "error" in await response.json()
    listed = await asyncio.to_thread(aegis, client, "rollout", "history", "held-h")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == [
        str(r["id"]) for r in history["rollouts"]
    ]
    shown = await asyncio.to_thread(aegis, client, "rollout", "history", "held-h", str(first_id))
    assert "bad idea (by alice)" in shown.stdout


async def test_a_canary_promotion_that_no_policy_matches_says_no_rollout_started(
    client: TestClient[Any, Any], register: Register, caplog: pytest.LogCaptureFixture
) -> None:
    await prepare(client, register, "z-free")  # no policy pattern matches z-free
    promoted = await asyncio.to_thread(aegis, client, "promote", "z-free", "2", "--to", "canary")
    assert promoted.returncode == 0, promoted.stderr
    assert "no rollout started: no policy's models pattern matches 'z-free'" in promoted.stdout
    assert "manual: held-*" in promoted.stdout  # the patterns there are, to see why
    await client.post("/v1/registry/z-free/rollback", headers=auth("operator"))
    caplog.clear()
    response = await client.post(
        "/v1/registry/z-free/2/promote", json={"stage": "canary"}, headers=auth("operator")
    )
    document = await response.json()
    assert document["stage"] == "canary"
    assert document["rollout"]["started"] is False
    assert "no policy's models pattern matches 'z-free'" in document["rollout"]["reason"]
    assert any("z-free 2 is canary but no rollout started" in r.getMessage() for r in caplog.records)
    assert (await client.get("/v1/rollouts/z-free", headers=auth("viewer"))).status == 404
