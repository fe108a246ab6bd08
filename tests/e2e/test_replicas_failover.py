"""Failover under load: three replicas, a real Envoy listing all three, a rollout, two `kill -9`s.

Three `aegis serve` replicas on one PostgreSQL (a 3 s lease, artifacts in a shared
directory), one Envoy whose ADS bootstrap (envoy/envoy-replicas.yaml) lists every
replica in `xds_cluster`, a real Prometheus scraping that Envoy for the rollout's
analysis, two reference model servers, and predictions through Envoy all the while.

1. A rollout starts (through a follower); at its first weight the leader is killed:
   another replica leads within lease + 2 s and the rollout goes on to prod, exactly
   once (one rollout in the history, each weight change decided once, one promotion
   in the registry).
2. Then the replica Envoy is attached to (`GET /v1/xds/nodes`' `replica`) is killed:
   Envoy keeps serving from the config it has, reconnects to the last replica, and
   follows a change made there (prod rolled back to version 1).

Not one request through Envoy fails during any of it. The model servers announce with
a 60 s TTL to one replica: renewals to a dead replica fail, and the announced rows
stay in the database for the test's length (a real model server would use a
load-balanced address for Aegis).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from controlplane.demo.processes import start_model_server
from controlplane.xds.validate import find_envoy_binary
from tests.conftest import SIGN_KEY, TOKENS
from tests.e2e.observed_stack import Load, wait_for_phase
from tests.e2e.replicas import (
    Replica,
    count_reasons,
    create_database,
    drop_database,
    eventually,
    rollout_decisions,
    start_replicas,
    weight_changes,
)
from tests.observability_processes import Prometheus, find_binary
from tests.processes import Envoy, free_port, stop

MODEL = "scorer"
LEASE_SECONDS = 3.0
FAILOVER_BOUND = LEASE_SECONDS + 2  # the bound for a new leader
POLICIES = """\
policies:
  - name: failover
    models: ["*"]
    steps:
      - setWeight: 20
      - pause: {duration: 3s}
      - setWeight: 50
      - pause: {duration: 2s}
    analysis:
      interval: 1s
      window: 3s
      failureLimit: 0
      inconclusiveLimit: 100
      consecutiveErrorLimit: 100
      minRequests: 5
      metrics:
        - name: error-rate
          template: request-error-rate
          thresholdRange: {max: 0.01}
    alerts: {rollback: true}
"""


@dataclass
class Deployment:
    replicas: list[Replica]
    envoy: Envoy
    prometheus: Prometheus
    gateway: str

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.aegis.process is not None and r.aegis.process.poll() is None]

    def leader(self) -> Replica | None:
        leaders = [r for r in self.live() if r.api("GET", "/v1/cluster", role="viewer")["role"] == "leader"]
        assert len(leaders) <= 1, f"two leaders: {[r.replica_id for r in leaders]}"
        return leaders[0] if leaders else None

    def envoy_replica(self) -> str | None:
        """The replica the Envoy's ADS stream is attached to now, as a live replica reports it."""
        nodes = self.live()[0].nodes()["nodes"]
        node = next((n for n in nodes if n["node_id"] == "gateway" and n["live"] and n["streams"]), None)
        return str(node["replica"]) if node else None


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if find_envoy_binary() is None or find_binary("prometheus") is None:
        pytest.fail("envoy or prometheus missing: ./run test installs them")
    root = tmp_path_factory.mktemp("failover")
    (root / "policies.yaml").write_text(POLICIES)
    # Prometheus is made once Envoy's admin port is known, but the replicas need its address first.
    prometheus_port = free_port()
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    url = asyncio.run(create_database())
    listener = free_port()
    envoy: Envoy | None = None
    prometheus: Prometheus | None = None
    model_servers = []
    replicas: list[Replica] = []
    try:
        replicas = start_replicas(root, url.replace("postgresql://", "postgresql+asyncpg://"),
                                  ["replica-a", "replica-b", "replica-c"], {
            "AEGIS_ENVOY_LISTENER": f"127.0.0.1:{listener}",
            "AEGIS_LEADER_LEASE_SECONDS": str(LEASE_SECONDS),
            "AEGIS_ROLLOUT_TICK_SECONDS": "0.2",
            "AEGIS_POLICIES": str(root / "policies.yaml"),
            "AEGIS_PROMETHEUS_URL": prometheus_url,
            "AEGIS_BLOB_STORE": f"file://{root / 'blobs'}",
        })
        envoy = Envoy(root / "envoy", xds_port=[r.aegis.grpc_port for r in replicas], node_id="gateway")
        prometheus = Prometheus(
            root / "prometheus",
            scrape_targets=[("envoy", f"127.0.0.1:{envoy.admin_port}", "/stats/prometheus")],
        )
        prometheus.port = prometheus_port
        prometheus.start()  # its first scrape comes ~6 s later: started early, waited for last
        first = replicas[0]
        for version in ("1", "2"):
            first.register(MODEL, version, f"{MODEL} weights {version}".encode() * 64)
        first.promote(MODEL, "1", "prod")
        with ThreadPoolExecutor(2) as pool:
            model_servers = list(pool.map(lambda version: start_model_server(
                aegis_url=first.aegis.url, token=TOKENS["operator"], sign_key=SIGN_KEY, model=MODEL,
                version=version, port=free_port(), workdir=root, ttl_seconds=60,
            ), ("1", "2")))
        envoy.start()
        first.wait_acked(MODEL)
        prometheus.wait_for_up("envoy")
        print(f"\n[failover e2e] logs under {root}")
        yield Deployment(replicas, envoy, prometheus, f"http://127.0.0.1:{listener}")
    finally:
        for process in model_servers:
            stop(process)
        if envoy is not None:
            envoy.stop()
        for replica in replicas:
            replica.aegis.stop()
        if prometheus is not None:
            prometheus.stop()
        asyncio.run(drop_database(url))


def kill(replica: Replica) -> tuple[float, float]:
    """`kill -9`; returns when, on the monotonic and the wall clock (Load's answers use the wall)."""
    assert replica.aegis.process is not None
    replica.aegis.stop(sig=signal.SIGKILL)
    return time.monotonic(), time.time()


def new_leader(deployment: Deployment, killed_at: float) -> tuple[Replica, float]:
    leader, _ = eventually(deployment.leader, within=FAILOVER_BOUND + 5, what="a new leader")
    return leader, time.monotonic() - killed_at


async def test_a_killed_leader_mid_rollout_costs_no_request_and_decides_nothing_twice(
    deployment: Deployment,
) -> None:
    async with Load(deployment.gateway, MODEL) as load:
        leader = deployment.leader()
        assert leader is not None
        follower = next(r for r in deployment.replicas if r is not leader)
        answer = await asyncio.to_thread(
            follower.api, "POST", f"/v1/registry/{MODEL}/2/promote", {"stage": "canary"}, role="operator"
        )
        assert answer["rollout"]["started"] is True

        def at_first_weight() -> dict[str, Any] | None:
            document: dict[str, Any] = follower.api("GET", f"/v1/rollouts/{MODEL}", role="viewer")
            return document if document["canary_weight"] == 20 and document["acknowledged"] else None

        await asyncio.to_thread(eventually, at_first_weight, within=10, what="weight 20 acknowledged")
        old_epoch = follower.api("GET", "/v1/cluster", role="viewer")["epoch"]
        envoy_on = deployment.envoy_replica()
        killed_at, _ = kill(leader)
        successor, failover = await asyncio.to_thread(new_leader, deployment, killed_at)
        print(f"\n[failover] kill -9 of the leader {leader.replica_id} (Envoy on {envoy_on}) -> "
              f"{successor.replica_id} leads after {failover:.2f} s")
        assert failover <= FAILOVER_BOUND
        rollout = await wait_for_phase(follower, MODEL, {"succeeded", "rolled_back", "paused"}, timeout=40)
        assert rollout["phase"] == "succeeded", rollout
        await asyncio.to_thread(follower.wait_acked, MODEL)
        settled = time.time() + 0.2  # answers to requests routed before the acknowledgement are in by then
        await asyncio.sleep(0.7)

    history, decisions = rollout_decisions(follower, MODEL)
    assert [(r["canary_version"], r["phase"]) for r in history] == [("2", "succeeded")]
    assert weight_changes(decisions) == [
        (0, "progressing"), (20, "progressing"), (50, "progressing"), (100, "succeeded")
    ]
    assert count_reasons(
        decisions, "started by", "canary weight 0 -> 20", "canary weight 20 -> 50", "all steps completed"
    ) == [1, 1, 1, 1], [d["reason"] for d in decisions]
    # Before the kill, the old leader's epoch; after it, only the successor's, never both at once.
    terms = [(d["replica"], d["epoch"]) for d in decisions]
    assert terms[0] == (leader.replica_id, old_epoch)
    assert terms[-1][0] == successor.replica_id and terms[-1][1] > old_epoch
    switch = terms.index(terms[-1])
    assert set(terms[:switch]) == {(leader.replica_id, old_epoch)} and set(terms[switch:]) == {terms[-1]}
    promotions = follower.api("GET", f"/v1/registry/{MODEL}/2", role="viewer")["metadata"]["_registry"]
    assert [h["to_stage"] for h in promotions["promotion_history"]].count("prod") == 1
    assert [(r["stage"]) for r in [follower.api("GET", f"/v1/registry/{MODEL}/{v}", role="viewer")
                                   for v in ("1", "2")]] == ["archived", "prod"]

    tally = load.tally()
    print(f"[failover] answers through Envoy: {dict(tally)}")
    assert {status for status, _ in tally} == {200}, tally
    assert tally[(200, "1")] > 0 and tally[(200, "2")] > 0, tally
    assert set(load.tally(since=settled)) == {(200, "2")}, load.tally(since=settled)


async def test_envoy_moves_to_another_replica_when_its_own_is_killed_and_keeps_serving(
    deployment: Deployment,
) -> None:
    live = {replica.replica_id for replica in deployment.live()}
    attached, _ = await asyncio.to_thread(
        eventually, lambda: r if (r := deployment.envoy_replica()) in live else None,
        within=10, what="Envoy on a live replica",
    )
    doomed = next(r for r in deployment.replicas if r.replica_id == attached)
    async with Load(deployment.gateway, MODEL) as load:
        await asyncio.sleep(0.5)
        _, killed_wall = kill(doomed)
        (survivor,) = deployment.live()
        moved, took = await asyncio.to_thread(
            eventually, lambda: r if (r := deployment.envoy_replica()) == survivor.replica_id else None,
            within=10, what="Envoy attached to the survivor",
        )
        print(f"\n[failover] Envoy's replica killed -> attached to {moved} after {took:.2f} s")
        served_meanwhile = load.tally(since=killed_wall)
        # The survivor leads (at once, or after the lease when the killed one led) and Envoy
        # follows what it serves: prod back to version 1.
        await asyncio.to_thread(eventually, deployment.leader, within=FAILOVER_BOUND + 5, what="a leader")
        await asyncio.to_thread(survivor.api, "POST", f"/v1/registry/{MODEL}/rollback", {}, role="operator")
        await asyncio.to_thread(
            eventually, partial(_answered_by, load, "1", after=time.time()), within=5,
            what="version 1 answering through Envoy",
        )
    tally = load.tally()
    print(f"[failover] answers through Envoy: {dict(tally)}; while it reconnected: {dict(served_meanwhile)}")
    assert {status for status, _ in tally} == {200}, tally
    assert served_meanwhile[(200, "2")] > 0, served_meanwhile


def _answered_by(load: Load, version: str, *, after: float) -> bool | None:
    return True if any(a.at > after and a.version == version for a in load.answers) else None
