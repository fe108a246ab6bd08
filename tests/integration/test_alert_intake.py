"""Alert intake against the running app: validate the whole webhook first, record only what was done.

A malformed alert, an alert without a fingerprint and a failing rollback must each leave
the next (correct) delivery free to roll the canary back.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from controlplane.app import DATABASE
from tests.conftest import TOKENS, auth
from tests.integration.conftest import Register, StartClient
from tests.observability_processes import Alertmanager, free_port

POLICY = """
policies:
  - name: manual
    models: ["held-*"]
    steps:
      - setWeight: 10
      - pause: {}
"""


@pytest.fixture
async def client(make_settings: Any, database_url: str, start_client: StartClient, tmp_path: Path) -> Any:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(POLICY)
    settings = make_settings(
        database_url,
        AEGIS_PROMETHEUS_URL=f"http://127.0.0.1:{free_port()}",  # no analysis in this policy
        AEGIS_POLICIES=policy_file,
        AEGIS_ROLLOUT_TICK_SECONDS=0.2,
        AEGIS_XDS_VALIDATE="false",
    )
    return await start_client(settings)


async def start_rollout(client: TestClient[Any, Any], register: Register, model: str) -> None:
    for version in ("1", "2"):
        assert (await register(model, version, f"{model} weights {version}".encode())).status == 201
    for version, stage in (("1", "prod"), ("2", "canary")):
        promoted = await client.post(
            f"/v1/registry/{model}/{version}/promote", json={"stage": stage}, headers=auth("operator")
        )
        assert promoted.status == 200, await promoted.text()
    assert await phase(client, model) == "progressing"  # at setWeight 10 (no Envoy acknowledges it here)


async def phase(client: TestClient[Any, Any], model: str) -> str:
    document = await (await client.get(f"/v1/rollouts/{model}", headers=auth("viewer"))).json()
    return str(document["phase"])


async def stages(client: TestClient[Any, Any], model: str) -> dict[str, str]:
    document = await (await client.get(f"/v1/registry/{model}", headers=auth("viewer"))).json()
    return {v["version"]: v["stage"] for v in document["versions"]}


def alert(model: str, **fields: Any) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "AegisCanaryHighErrorRate", "model": model},
        "annotations": {"summary": "20% of requests fail"},
        "startsAt": "2026-12-02T10:00:00Z",
        "fingerprint": f"fp-{model}",
        **fields,
    }


async def post_alerts(client: TestClient[Any, Any], *alerts: dict[str, Any]) -> aiohttp.ClientResponse:
    webhook = {"version": "4", "status": "firing", "receiver": "aegis", "alerts": list(alerts)}
    return await client.post("/v1/alerts/alertmanager", json=webhook, headers=auth("operator"))


async def test_a_malformed_alert_refuses_the_whole_webhook_and_the_corrected_retry_rolls_back(
    client: TestClient[Any, Any], register: Register
) -> None:
    await start_rollout(client, register, "held-a")
    bad = await post_alerts(client, alert("other"), alert("held-a", annotations="x"))
    assert bad.status == 422
    message = (await bad.json())["error"]["message"]
    assert "alerts[1].annotations" in message and "nothing was recorded" in message
    assert await phase(client, "held-a") == "progressing"

    good = await post_alerts(client, alert("other"), alert("held-a"))
    assert good.status == 200
    actions = [outcome["action"] for outcome in (await good.json())["outcomes"]]
    assert actions == ["recorded_no_active_rollout", "rollback"]  # neither taken for a duplicate
    assert await phase(client, "held-a") == "rolled_back"
    assert await stages(client, "held-a") == {"1": "prod", "2": "staging"}
    again = await post_alerts(client, alert("held-a"))
    assert [o["action"] for o in (await again.json())["outcomes"]] == ["duplicate"]


async def test_alerts_without_fingerprint_or_start_roll_back_each_model(
    client: TestClient[Any, Any], register: Register
) -> None:
    for model in ("held-a", "held-b"):
        await start_rollout(client, register, model)
    bare = [{"status": "firing", "labels": {"alertname": "CanaryBroken", "model": m}}
            for m in ("held-a", "held-b")]
    first = await post_alerts(client, bare[0])
    second = await post_alerts(client, bare[1])
    assert [o["action"] for o in (await first.json())["outcomes"]] == ["rollback"]
    assert [o["action"] for o in (await second.json())["outcomes"]] == ["rollback"]
    assert await phase(client, "held-a") == "rolled_back"
    assert await phase(client, "held-b") == "rolled_back"


FAIL_TRAFFIC_WRITES = {
    "sqlite": [
        f"CREATE TRIGGER aegis_test_full_{op} BEFORE {op} ON traffic_settings "
        "BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END"
        for op in ("INSERT", "UPDATE", "DELETE")
    ],
    "postgresql": [
        "CREATE FUNCTION aegis_test_full() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'disk full (test)'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER aegis_test_full BEFORE INSERT OR UPDATE OR DELETE ON traffic_settings "
        "FOR EACH ROW EXECUTE FUNCTION aegis_test_full()",
    ],
}
HEAL_TRAFFIC_WRITES = {
    "sqlite": [f"DROP TRIGGER aegis_test_full_{op}" for op in ("INSERT", "UPDATE", "DELETE")],
    "postgresql": ["DROP TRIGGER aegis_test_full ON traffic_settings", "DROP FUNCTION aegis_test_full()"],
}


async def run_sql(client: TestClient[Any, Any], statements: dict[str, list[str]]) -> None:
    database = client.app[DATABASE]
    async with database.engine.begin() as connection:
        for statement in statements[connection.dialect.name]:
            await connection.exec_driver_sql(statement)


async def test_a_rollback_that_fails_is_not_recorded_and_alertmanagers_retry_rolls_back(
    client: TestClient[Any, Any], register: Register
) -> None:
    await start_rollout(client, register, "held-a")
    await run_sql(client, FAIL_TRAFFIC_WRITES)  # the database refuses the rollback's traffic write
    failed = await post_alerts(client, alert("held-a"))
    assert failed.status >= 500  # Alertmanager retries a 5xx
    assert await phase(client, "held-a") == "progressing"

    await run_sql(client, HEAL_TRAFFIC_WRITES)
    retried = await post_alerts(client, alert("held-a"))
    assert retried.status == 200
    assert [o["action"] for o in (await retried.json())["outcomes"]] == ["rollback"]
    assert await phase(client, "held-a") == "rolled_back"
    assert await stages(client, "held-a") == {"1": "prod", "2": "staging"}


async def test_a_real_alertmanager_delivery_rolls_the_canary_back(
    client: TestClient[Any, Any], register: Register, tmp_path: Path
) -> None:
    await start_rollout(client, register, "held-a")
    alertmanager = Alertmanager(
        tmp_path / "alertmanager",
        webhook_url=str(client.make_url("/v1/alerts/alertmanager")),
        bearer_token=TOKENS["operator"],
    )
    await asyncio.to_thread(alertmanager.start)
    try:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        fired = {"labels": {"alertname": "AegisCanaryHighErrorRate", "model": "held-a", "version": "2"},
                 "annotations": {"summary": "canary errors"}, "startsAt": now}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{alertmanager.url}/api/v2/alerts", json=[fired]) as response,
        ):
            assert response.status == 200
        for _ in range(150):
            if await phase(client, "held-a") == "rolled_back":
                break
            await asyncio.sleep(0.2)
        document = await (await client.get("/v1/rollouts/held-a", headers=auth("viewer"))).json()
        assert document["phase"] == "rolled_back"
        assert document["message"] == "alert AegisCanaryHighErrorRate firing: canary errors"
    finally:
        await asyncio.to_thread(alertmanager.stop)


def on_table(statements: dict[str, list[str]], table: str) -> dict[str, list[str]]:
    return {d: [s.replace("traffic_settings", table) for s in sql] for d, sql in statements.items()}


async def test_a_retried_rollback_after_a_partial_failure_finishes_without_moving_prod(
    client: TestClient[Any, Any], register: Register
) -> None:
    # 0 was prod before 1: a rollback of a model with no canary would restore 0.
    for version in ("0", "1", "2"):
        assert (await register("held-c", version, f"weights {version}".encode())).status == 201
    for version, stage in (("0", "prod"), ("1", "prod"), ("2", "canary")):
        promoted = await client.post(
            f"/v1/registry/held-c/{version}/promote", json={"stage": stage}, headers=auth("operator")
        )
        assert promoted.status == 200, await promoted.text()
    # The registry's rollback commits; recording the rollout's decision then fails.
    await run_sql(client, on_table(FAIL_TRAFFIC_WRITES, "rollout_decisions"))
    failed = await post_alerts(client, alert("held-c"))
    assert failed.status >= 500
    assert await stages(client, "held-c") == {"0": "archived", "1": "prod", "2": "staging"}

    await run_sql(client, on_table(HEAL_TRAFFIC_WRITES, "rollout_decisions"))
    retried = await post_alerts(client, alert("held-c"))
    assert retried.status == 200, await retried.text()
    assert await phase(client, "held-c") == "rolled_back"
    assert await stages(client, "held-c") == {"0": "archived", "1": "prod", "2": "staging"}
