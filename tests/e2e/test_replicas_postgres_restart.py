"""Replicas while PostgreSQL restarts: xDS goes on from memory, a rollout holds, and all catch up after.

A private PostgreSQL (initdb/pg_ctl, stopped and started by the test; the machine's
shared server is never touched) under two replicas. A rollout is at its first weight
when PostgreSQL stops, and its timed pause runs out during the outage: it holds there
(nothing can be written), then goes on once PostgreSQL is back, each step decided once.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.replicas import (
    PrivatePostgres,
    Replica,
    count_reasons,
    create_database,
    eventually,
    rollout_decisions,
    start_replicas,
    weight_changes,
)
from tests.e2e.stack import ApiError
from tests.processes import free_port

MODEL = "ranker"
ROLLING = "rolling"
PAUSE_SECONDS = 2.0
POLICIES = f"""
policies:
  - name: held
    models: ["{ROLLING}"]
    steps:
      - setWeight: 20
      - pause: {{duration: {PAUSE_SECONDS:g}s}}
      - setWeight: 60
      - pause: {{duration: 1s}}
"""


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()


def discovered_weights(replica: Replica) -> dict[str, Any]:
    """A first REST RTDS poll (the runtime layer with the weights), as a new Envoy sends it:
    answered from memory."""
    request = urllib.request.Request(
        f"{replica.aegis.url}/v3/discovery:runtime",
        data=json.dumps({
            "node": {"id": "restart-probe"}, "version_info": "", "resource_names": ["aegis_weights"],
        }).encode(),
        method="POST", headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        document: dict[str, Any] = json.loads(response.read())
        return document


def same_weights(a: Replica, b: Replica) -> str | None:
    """The runtime (weights) version both serve, or None while they differ."""
    version = str(discovered_weights(a)["version_info"])
    return version if discovered_weights(b)["version_info"] == version else None


def caught_up(replica: Replica, source: Replica, weights: dict[str, int]) -> dict[str, Any] | None:
    """`replica`'s traffic document once it has `weights` in the xDS version `source` serves."""
    document = replica.traffic(MODEL)
    if document["weights"] != weights or document["xds_version"] != source.traffic(MODEL)["xds_version"]:
        return None
    return document


def follower_metrics(replica: Replica) -> dict[str, float]:
    with urllib.request.urlopen(f"{replica.aegis.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: float(value) for name, _, value in
        (line.partition(" ") for line in text.splitlines() if line.startswith("aegis_follower_"))
    }


def quiet_follower(replica: Replica, *, connections_before: float) -> float | None:
    """The replica's reconcile count once its listener connected again (a connection that died
    with the database may look up until a health check finds it dead) and no reconcile is due."""
    found = follower_metrics(replica)
    if (found["aegis_follower_listener_connections_total"] <= connections_before
            or found["aegis_follower_listener_connected"] != 1
            or found["aegis_follower_reconcile_pending"] != 0):
        return None
    return found["aegis_follower_reconciles_total"]


async def test_replicas_serve_xds_through_a_postgresql_restart_and_catch_up(
    postgres: PrivatePostgres, tmp_path: Path
) -> None:
    url = await create_database(postgres.dsn)
    database_url = url.replace("postgresql://", "postgresql+asyncpg://")
    (tmp_path / "policies.yaml").write_text(POLICIES)
    env = {
        "AEGIS_ENVOY_LISTENER": f"127.0.0.1:{free_port()}", "AEGIS_POLICIES": str(tmp_path / "policies.yaml"),
        "AEGIS_ROLLOUT_TICK_SECONDS": "0.2",
        # No backstop reconcile in the middle: the one after a reconnect is what is shown here.
        "AEGIS_FOLLOW_RECONCILE_SECONDS": "600",
    }
    a = start_replicas(tmp_path, database_url, ["replica-a"], env)[0]
    b = start_replicas(tmp_path, database_url, ["replica-b"], env)[0]
    try:
        for model in (MODEL, ROLLING):
            for version in ("1", "2"):
                a.register(model, version, f"{model} {version}".encode())
                a.api("POST", "/v1/endpoints", {
                    "model_name": model, "version": version, "address": "127.0.0.1", "port": free_port(),
                    "ttl_seconds": 600,
                }, role="operator")
            a.promote(model, "1", "prod")
        a.promote(MODEL, "2", "canary")
        a.set_traffic(MODEL, {"1": 80, "2": 20})
        eventually(lambda: caught_up(b, a, {"1": 80, "2": 20}), within=3, what="80/20 on B")
        a.promote(ROLLING, "2", "canary")  # the rollout starts: weight 20, then a timed pause
        eventually(lambda: b.traffic(ROLLING)["weights"] == {"1": 80, "2": 20} or None, within=2,
                   what="the rollout's first weight on B")
        first_weight_at = time.monotonic()
        served, _ = eventually(
            lambda: same_weights(a, b), within=3, what="the same weights on A and B"
        )

        connections_before = follower_metrics(b)["aegis_follower_listener_connections_total"]
        postgres.stop()
        # Envoy is answered from memory: the same weights as before the outage.
        assert discovered_weights(b)["version_info"] == served
        assert b.traffic(MODEL)["weights"] == {"1": 80, "2": 20}
        with pytest.raises(ApiError) as refused:
            a.set_traffic(MODEL, {"1": 50, "2": 50})
        assert refused.value.status == 503 and "storage_unavailable" in str(refused.value)
        assert a.traffic(MODEL)["weights"] == {"1": 80, "2": 20}, "nothing half-applied"
        # Listeners notice and retry meanwhile, and the rollout's pause runs out: it holds at 20.
        time.sleep(max(1.0, first_weight_at + PAUSE_SECONDS + 1.0 - time.monotonic()))
        assert discovered_weights(a)["version_info"] == served
        assert [r.traffic(ROLLING)["weights"] for r in (a, b)] == [{"1": 80, "2": 20}] * 2

        postgres.start()
        # A change after the restart reaches B (the pool's first statement may meet a dead connection).
        eventually(lambda: a.set_traffic(MODEL, {"1": 60, "2": 40}), within=10, what="a PUT after restart")
        after, _ = eventually(lambda: caught_up(b, a, {"1": 60, "2": 40}), within=6, what="60/40 on B")
        assert after["xds_version"] == discovered_weights(b)["version_info"]

        # A change B was never told about (as one committed while its listener was away) is read
        # by the reconcile that follows B's next connect. First B must be done with the restart:
        # its listener connected again and no reconcile due (one follows each connect and each
        # failed read); B can be caught up before that, by the reconcile after a failed read.
        reconciles, _ = eventually(
            lambda: quiet_follower(b, connections_before=connections_before), within=15,
            what="B's listener back after the restart, with no reconcile due",
        )
        assert follower_metrics(b)["aegis_follower_changes_applied_total"] >= 1, "A's changes, one by one"
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(
                "UPDATE traffic_settings SET weights = $1::json WHERE model_name = $2",
                json.dumps({"1": 30, "2": 70}), MODEL,
            )
            time.sleep(0.5)
            assert b.traffic(MODEL)["weights"] == {"1": 60, "2": 40}, "no notification, no change yet"
            assert follower_metrics(b)["aegis_follower_reconciles_total"] == reconciles
            ended = await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                "aegis-follow replica-b",
            )
            assert ended == 1
        finally:
            await connection.close()
        eventually(
            lambda: b.traffic(MODEL) if b.traffic(MODEL)["weights"] == {"1": 30, "2": 70} else None,
            within=3, what="the missed change on B",
        )
        # The rollout went on once PostgreSQL was back, each step decided once, nothing lost.
        # The stage move and the rollout's last state are two notifications: wait for both.
        eventually(
            lambda: (b.traffic(ROLLING)["prod"] == "2"
                     and [r["phase"] for r in rollout_decisions(b, ROLLING)[0]] == ["succeeded"]) or None,
            within=10, what="the rollout ended",
        )
        rollouts, decisions = rollout_decisions(b, ROLLING)
        assert [r["phase"] for r in rollouts] == ["succeeded"]
        assert weight_changes(decisions) == [
            (0, "progressing"), (20, "progressing"), (60, "progressing"), (100, "succeeded")
        ]
        assert count_reasons(
            decisions, "canary weight 0 -> 20", "canary weight 20 -> 60", "all steps completed"
        ) == [1, 1, 1], [d["reason"] for d in decisions]
        assert a.aegis.process is not None and a.aegis.process.poll() is None
        assert b.aegis.process is not None and b.aegis.process.poll() is None
    finally:
        for replica in (a, b):
            replica.aegis.stop()
