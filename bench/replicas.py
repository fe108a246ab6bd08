"""replicas: three `aegis serve` replicas on one PostgreSQL; how fast a change crosses, and a failover.

Three replicas A, B, C share a database (lease `--lease` seconds, 3 by default so that a
run stays short; the product default is 10), artifacts in one shared directory.

- **Cross-replica propagation.** Two real model servers behind a real Envoy (shipped
  ADS bootstrap). The weights flip between 100/0 and 0/100 through A's
  `PUT /v1/traffic`, back to back (bench/propagation.py's pattern: the next switch
  50-300 ms after the previous one first answered), and the time to the first answer
  from the newly weighted version through Envoy is taken. First with the Envoy
  attached to A (the baseline: no replica to cross), then, in the same run, with an
  Envoy attached to B (the change goes A → PostgreSQL NOTIFY → B → Envoy). One Envoy
  at a time: both would take the same listener port, which every replica gives Envoy.
  value = B's median; target 50 ms.
- **Failover.** A rollout whose timed pauses end every second; at a random moment the
  leader is killed (`kill -9`); the time from the kill to the first rollout decision
  made by the next leader (and to `GET /v1/cluster` naming it) is taken. The killed
  replica is started again (as a follower) before the next trial. Target: lease + 2 s.
- **Alert through a follower.** A rollout at 50 %; an Alertmanager webhook sent to a
  follower; the time until the follower answers (the leader rolled back and stored
  the outcome) and until the follower's own `GET /v1/rollouts` shows it rolled back.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import report
from bench.propagation import Pattern, summary, switches
from controlplane.demo.processes import Envoy, free_port, start_model_server, stop
from tests.conftest import SIGN_KEY, TOKENS
from tests.e2e.replicas import Replica, create_database, drop_database, eventually, start_replicas

PROPAGATION_MODEL = "bench-propagation"
TARGET_MS = 50.0
POLICIES = """\
policies:
  - name: ticking
    models: ["failover-*"]
    steps:
      - {setWeight: 10}
      - {pause: {duration: 1s}}
      - {setWeight: 20}
      - {pause: {duration: 1s}}
      - {setWeight: 30}
      - {pause: {duration: 1s}}
      - {setWeight: 40}
      - {pause: {duration: 1s}}
      - {setWeight: 50}
      - {pause: {duration: 1s}}
      - {setWeight: 60}
      - {pause: {duration: 1s}}
      - {setWeight: 70}
      - {pause: {}}
  - name: alerted
    models: ["alerted-*"]
    steps: [{setWeight: 50}, {pause: {duration: 10m}}]
    alerts: {rollback: true}
"""


@dataclass
class Cluster:
    root: Path
    replicas: list[Replica]
    listener: int
    lease_seconds: float

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.listener}"

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.aegis.process is not None and r.aegis.process.poll() is None]

    def leader(self) -> Replica | None:
        found = [r for r in self.live() if r.api("GET", "/v1/cluster", role="viewer")["role"] == "leader"]
        return found[0] if len(found) == 1 else None

    def prepare(self, model: str, *, via: Replica) -> None:
        """Versions 1 (prod) and 2, each with an announced endpoint (no server: no traffic goes there)."""
        for version in ("1", "2"):
            via.register(model, version, f"{model} {version}".encode())
            via.api("POST", "/v1/endpoints", {
                "model_name": model, "version": version, "address": "127.0.0.1", "port": free_port(),
                "ttl_seconds": 600,
            }, role="operator")
        via.promote(model, "1", "prod")


@contextmanager
def running_cluster(root: Path, lease_seconds: float) -> Iterator[Cluster]:
    (root / "policies.yaml").write_text(POLICIES)
    url = asyncio.run(create_database())
    listener = free_port()
    replicas: list[Replica] = []
    try:
        database_url = url.replace("postgresql://", "postgresql+asyncpg://")
        replicas = start_replicas(root, database_url, ["a", "b", "c"], {
            "AEGIS_ENVOY_LISTENER": f"127.0.0.1:{listener}",
            "AEGIS_LEADER_LEASE_SECONDS": str(lease_seconds),
            "AEGIS_ROLLOUT_TICK_SECONDS": "0.2",
            "AEGIS_POLICIES": str(root / "policies.yaml"),
            "AEGIS_BLOB_STORE": f"file://{root / 'blobs'}",
            # An Envoy stopped between measurements stops counting for acknowledgements soon.
            "AEGIS_XDS_NODE_STALE_SECONDS": "3",
            "AEGIS_LOG_LEVEL": "WARNING",
            # Nothing here queries Prometheus (no policy has analysis).
            "AEGIS_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}",
        })
        yield Cluster(root, replicas, listener, lease_seconds)
    finally:
        for replica in replicas:
            replica.aegis.stop()
        asyncio.run(drop_database(url))


# --- cross-replica propagation ------------------------------------------------------------------


@dataclass
class Route:
    """Weights set through `writer`, traffic watched through the Envoy on `gateway`."""

    writer: Replica
    gateway: str

    def set_traffic(self, model: str, weights: dict[str, int]) -> object:
        return self.writer.set_traffic(model, weights)

    def wait_acked(self, model: str) -> object:
        return self.writer.wait_acked(model)


def propagation(cluster: Cluster, count: int) -> dict[str, Any]:
    a, b = cluster.replicas[0], cluster.replicas[1]
    model = PROPAGATION_MODEL
    for version in ("1", "2"):
        a.register(model, version, f"weights {version}".encode() * 100)
    a.promote(model, "1", "prod")
    a.promote(model, "2", "canary")  # no policy matches: weights are the operator's
    servers = [
        start_model_server(
            aegis_url=a.aegis.url, token=TOKENS["operator"], sign_key=SIGN_KEY, model=model, version=version,
            port=free_port(), workdir=cluster.root, ttl_seconds=120,
        )
        for version in ("1", "2")
    ]
    results: dict[str, Any] = {}
    try:
        a.set_traffic(model, {"1": 100, "2": 0})
        for label, attached in (("envoy_on_a", a), ("envoy_on_b", b)):
            envoy = Envoy(cluster.root / f"envoy-{label}", xds_port=attached.aegis.grpc_port, node_id=label)
            envoy.start()
            try:
                route = Route(a, cluster.gateway)
                a.wait_acked(model)
                warm_up = asyncio.run(switches(route, 2, pattern=Pattern.BACK_TO_BACK, model=model))
                timings = asyncio.run(switches(route, count, pattern=Pattern.BACK_TO_BACK, model=model))
                replica = next(n["replica"] for n in a.nodes()["nodes"] if n["node_id"] == label)
                results[label] = {
                    **summary(timings), "attached_to": replica,
                    "first_two_flips_not_counted_ms": [round(ms, 1) for ms in warm_up],
                }
            finally:
                envoy.stop()
    finally:
        for process in servers:
            stop(process)
    return results


# --- failover -------------------------------------------------------------------------------------


def decided_at(decision: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(decision["at"])).timestamp()


def failover_trial(cluster: Cluster, index: int) -> dict[str, float]:
    leader, _ = eventually(cluster.leader, within=cluster.lease_seconds + 5, what="a leader")
    follower = next(r for r in cluster.live() if r is not leader)
    model = f"failover-{index}"
    cluster.prepare(model, via=follower)
    follower.promote(model, "2", "canary")

    def rolling() -> dict[str, Any] | None:
        document: dict[str, Any] = follower.api("GET", f"/v1/rollouts/{model}", role="viewer")
        return document if document["canary_weight"] >= 10 else None

    eventually(rolling, within=10, what="the rollout under way")
    time.sleep(random.uniform(0, 1))  # a random point of the rollout's one-second rhythm
    assert leader.aegis.process is not None
    leader.aegis.stop(sig=signal.SIGKILL)
    killed_at, killed_mono = time.time(), time.monotonic()
    successor, _ = eventually(cluster.leader, within=cluster.lease_seconds + 10, what="a new leader")
    led_after = time.monotonic() - killed_mono

    def next_decision() -> float | None:
        document = follower.api("GET", f"/v1/rollouts/{model}", role="viewer")
        ats = [decided_at(d) for d in document["decisions"] if d["replica"] == successor.replica_id]
        return min(ats) if ats else None

    decided, _ = eventually(next_decision, within=cluster.lease_seconds + 10, what="the next decision")
    follower.api("POST", f"/v1/rollouts/{model}/abort", {"reason": "bench trial over"}, role="operator")
    leader.aegis.start()  # back, as a follower, for the next trial
    return {"new_leader_s": round(led_after, 2), "next_decision_s": round(decided - killed_at, 2)}


# --- alert through a follower ---------------------------------------------------------------------


def alert_trial(cluster: Cluster, index: int) -> dict[str, float]:
    leader, _ = eventually(cluster.leader, within=cluster.lease_seconds + 5, what="a leader")
    follower = next(r for r in cluster.live() if r is not leader)
    model = f"alerted-{index}"
    cluster.prepare(model, via=follower)
    follower.promote(model, "2", "canary")
    eventually(
        lambda: follower.traffic(model)["weights"] == {"1": 50, "2": 50} or None, within=10,
        what="the canary at 50 %",
    )
    alert = {
        "version": "4", "status": "firing",
        "alerts": [{
            "status": "firing", "labels": {"alertname": "CanaryErrors", "model": model, "version": "2"},
            "startsAt": "2026-12-01T00:00:00Z", "fingerprint": f"bench{index}",
        }],
    }
    sent = time.monotonic()
    answer = follower.api("POST", "/v1/alerts/alertmanager", alert, role="operator")
    answered = time.monotonic() - sent
    assert answer["outcomes"][0]["action"] == "rollback", answer
    eventually(
        lambda: follower.api("GET", f"/v1/rollouts/{model}", role="viewer")["phase"] == "rolled_back" or None,
        within=5, what="rolled back on the follower",
    )
    return {"answered_s": round(answered, 3), "shown_s": round(time.monotonic() - sent, 3)}


def median_of(trials: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(t[key] for t in trials), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--switches", type=int, default=20, help="weight switches per Envoy")
    parser.add_argument("--failovers", type=int, default=3, help="leader kills")
    parser.add_argument("--alerts", type=int, default=5, help="alerts sent to a follower")
    parser.add_argument("--lease", type=float, default=3.0, help="AEGIS_LEADER_LEASE_SECONDS")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="aegis-bench-replicas-") as scratch,
        running_cluster(Path(scratch), args.lease) as cluster,
    ):
        crossing = propagation(cluster, args.switches)
        alerts = [alert_trial(cluster, n) for n in range(args.alerts)]
        failovers = [failover_trial(cluster, n) for n in range(args.failovers)]
    on_a, on_b = crossing["envoy_on_a"]["median_ms"], crossing["envoy_on_b"]["median_ms"]
    failover_bound = args.lease + 2
    report(
        "replicas",
        value=on_b,
        unit="ms",
        baseline="the same PUTs on A, seen through an Envoy attached to A",
        baseline_value=on_a,
        target=TARGET_MS,
        higher_is_better=False,
        details={
            "value_is": "A's PUT /v1/traffic -> first answer of the new target through an Envoy on B, "
                        "back-to-back switches, median",
            "switches_per_envoy": args.switches,
            "propagation": crossing,
            "lease_seconds": args.lease,
            "failover": {
                "trials": failovers,
                "median_next_decision_s": median_of(failovers, "next_decision_s"),
                "max_next_decision_s": max(t["next_decision_s"] for t in failovers),
                "median_new_leader_s": median_of(failovers, "new_leader_s"),
                "target_s": failover_bound,
                "meets_target": max(t["next_decision_s"] for t in failovers) <= failover_bound,
            },
            "alert_via_follower": {
                "trials": alerts,
                "median_answered_s": median_of(alerts, "answered_s"),
                "median_shown_on_follower_s": median_of(alerts, "shown_s"),
                "target_s": 3.0,
            },
        },
    )


if __name__ == "__main__":
    main()
