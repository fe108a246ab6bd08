"""Several `aegis serve` replicas on one PostgreSQL database, as real processes.

Schema creation when they start together, one leader by lease with a fencing epoch,
failover after `kill -9` and after `SIGSTOP`, commands and alerts sent to followers,
and SQLite refusing a second replica.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from controlplane.cluster.store import EpochFence, LeaseStore, NotLeader
from controlplane.migrations import head_revision, migrate
from controlplane.traffic.store import TrafficRow, TrafficStore
from registry.store import Database, fenced
from tests.conftest import API_TOKENS, POSTGRES_DSN, SIGN_KEY
from tests.e2e.stack import AegisApi
from tests.processes import AegisServer, free_port, wait_for_http

pytestmark = pytest.mark.postgres

LEASE_SECONDS = 3.0
POLICY = """
policies:
  - name: gated
    models: ["*"]
    steps:
      - setWeight: 20
      - pause: {}
      - setWeight: 50
      - pause: {duration: 2s}
      - setWeight: 80
      - pause: {}
"""


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL, dropped afterwards."""
    name = f"aegis_replicas_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def _query(database_url: str, statement: str) -> list[Any]:
    async def run() -> list[Any]:
        connection = await asyncpg.connect(database_url)
        try:
            return list(await connection.fetch(statement))
        finally:
            await connection.close()

    return asyncio.run(run())


def replica(tmp_path: Path, name: str, database_url: str, **env: str) -> AegisServer:
    return AegisServer({
        "AEGIS_DATA_DIR": str(tmp_path / name),
        "AEGIS_DATABASE_URL": database_url,
        "AEGIS_REPLICA_ID": name,
        "AEGIS_API_TOKENS": API_TOKENS,
        "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
        "AEGIS_LEADER_LEASE_SECONDS": str(LEASE_SECONDS),
        "AEGIS_ROLLOUT_TICK_SECONDS": "0.2",
        "AEGIS_XDS_VALIDATE": "false",
        **env,
    })


def launch(server: AegisServer) -> None:
    """Start without waiting, so that several start together."""
    data_dir = Path(server.env["AEGIS_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    server.log_file = (data_dir / "aegis.log").open("ab")
    server.process = subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "serve"],
        env=server.env, stdout=server.log_file, stderr=subprocess.STDOUT,
    )


def start_together(servers: list[AegisServer]) -> None:
    for server in servers:
        launch(server)
    for server in servers:
        wait_for_http(f"{server.url}/healthz", process=server.process, timeout=60)


def cluster(server: AegisServer) -> dict[str, Any]:
    document: dict[str, Any] = AegisApi(server).api("GET", "/v1/cluster", role="viewer")
    return document


def wait_until(what: str, check: Any, *, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.05)


def wait_for_leader(servers: list[AegisServer]) -> AegisServer:
    """The one replica of `servers` that leads, within the bound the issue sets (lease + 2 s)."""
    found: AegisServer = wait_until("a leader", lambda: leader_of(servers), seconds=LEASE_SECONDS + 2)
    return found


def leader_of(servers: list[AegisServer]) -> AegisServer | None:
    leaders = [s for s in servers if cluster(s)["role"] == "leader"]
    assert len(leaders) <= 1, "two replicas act as the leader at once"
    return leaders[0] if leaders else None


def test_replicas_started_together_on_an_empty_database_never_crash(tmp_path: Path) -> None:
    """The race that crashed one in 2 of 6 starts: CREATE TABLE from two processes at once."""
    for round_number in range(10):
        with postgres_database() as database_url:
            servers = [replica(tmp_path / str(round_number), name, database_url) for name in ("a", "b")]
            try:
                start_together(servers)
                assert all(s.process is not None and s.process.poll() is None for s in servers)
                versions = _query(database_url, "SELECT version_num FROM alembic_version")
                assert [row[0] for row in versions] == [head_revision()]
            finally:
                for server in servers:
                    server.stop(sig=signal.SIGKILL)  # they started: that is all this test asks


def test_a_second_replica_on_one_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    database = tmp_path / "shared" / "aegis.db"
    first = replica(tmp_path, "first", f"sqlite:///{database}").start()
    try:
        second = replica(tmp_path, "second", f"sqlite:///{database}")
        launch(second)
        assert second.process is not None
        assert second.process.wait(timeout=30) == 2
        second.log_file.close()
        log = (tmp_path / "second" / "aegis.log").read_text()
        assert f"the SQLite database {database} is in use by another aegis serve (pid" in log
        assert "run several replicas on PostgreSQL" in log
        assert cluster(first)["role"] == "leader"  # the first one is untouched
    finally:
        first.stop()


def test_a_deposed_leaders_fenced_write_is_refused_and_stores_nothing() -> None:
    """Two processes' worth of stores on one database: A's lease lapses, B takes it, A writes."""
    with postgres_database() as plain_url:
        asyncio.run(_deposed_leader_writes(plain_url.replace("postgresql://", "postgresql+asyncpg://")))


async def _deposed_leader_writes(url: str) -> None:
    a, b = Database(url), Database(url)
    try:
        await migrate(a)
        leases_a, leases_b = LeaseStore(a), LeaseStore(b)
        first = await leases_a.attempt("a#1", lease_seconds=0.5, started_at=0)
        renewed = await leases_a.attempt("a#1", lease_seconds=0.5, started_at=0)
        assert (first.kind, first.epoch, renewed.epoch) == ("held", 1, 1)
        assert (await leases_b.attempt("b#1", lease_seconds=0.5, started_at=0)).kind == "taken"
        refused: list[int] = []
        fence_a = EpochFence(a, holder="a#1", epoch=1, on_refused=refused.append)
        setting = TrafficRow(model_name="m", weights={"1": 100}, updated_at=datetime.now(UTC))
        with fenced(fence_a):
            await TrafficStore(a).save_setting(setting)  # A still leads: stored
        await asyncio.sleep(0.6)
        taken = await leases_b.attempt("b#1", lease_seconds=5, started_at=0)
        assert (taken.kind, taken.epoch) == ("held", 2)
        with fenced(fence_a), pytest.raises(NotLeader, match="epoch 1"):
            await TrafficStore(a).save_setting(
                TrafficRow(model_name="m", weights={"1": 0}, updated_at=datetime.now(UTC))
            )
        assert refused == [1]
        assert (await TrafficStore(b).load_settings())["m"].weights == {"1": 100}
        lease = await leases_b.read()
        assert (lease.leader_id, lease.epoch) == ("b", 2)
    finally:
        await a.dispose()
        await b.dispose()


@pytest.fixture
def three_replicas(tmp_path: Path) -> Iterator[tuple[list[AegisServer], str]]:
    (tmp_path / "policies.yaml").write_text(POLICY)
    with postgres_database() as database_url:
        servers = [
            replica(
                tmp_path, name, database_url,
                AEGIS_POLICIES=str(tmp_path / "policies.yaml"),
                # No Prometheus here: the policy has no analysis, and nothing must query one.
                AEGIS_PROMETHEUS_URL=f"http://127.0.0.1:{free_port()}",
            )
            for name in ("r1", "r2", "r3")
        ]
        try:
            start_together(servers)
            yield servers, database_url
        finally:
            for server in servers:
                if server.process is not None and server.process.poll() is None:
                    server.process.send_signal(signal.SIGCONT)  # a stopped one must wake to stop
                server.stop()


def metrics_of(server: AegisServer) -> str:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        return str(response.read().decode())


def epochs_of_decisions(database_url: str) -> list[int]:
    rows = _query(database_url, "SELECT inputs FROM rollout_decisions ORDER BY id")
    return [int(json.loads(row[0])["epoch"]) for row in rows]


def reasons_of_decisions(database_url: str) -> list[str]:
    return [str(row[0]) for row in _query(database_url, "SELECT reason FROM rollout_decisions ORDER BY id")]


def rollout(server: AegisServer) -> dict[str, Any]:
    document: dict[str, Any] = AegisApi(server).api("GET", "/v1/rollouts/m", role="viewer")
    return document


def test_one_leader_fenced_and_replaced_while_followers_take_commands(
    three_replicas: tuple[list[AegisServer], str],
) -> None:
    servers, database_url = three_replicas
    leader = wait_for_leader(servers)
    views = [cluster(s) for s in servers]
    assert [v["replica_id"] for v in views] == ["r1", "r2", "r3"]
    assert {v["leader_id"] for v in views} == {views[servers.index(leader)]["replica_id"]}
    assert len({v["epoch"] for v in views}) == 1
    assert [r["replica_id"] for r in views[0]["replicas"]] == ["r1", "r2", "r3"]
    assert all(r["live"] for r in views[0]["replicas"])
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{leader.url}/v1/cluster", timeout=5)
    assert refused.value.code == 401
    # The count is taken at each heartbeat (every lease / 5): the others' first ones may come after.
    metrics = wait_until(
        "three replicas counted", lambda: "aegis_replicas 3.0" in (m := metrics_of(leader)) and m, seconds=2
    )
    assert "aegis_leader 1.0" in metrics
    assert "aegis_leader 0.0" in metrics_of(next(s for s in servers if s is not leader))
    follower = next(s for s in servers if s is not leader)
    api = AegisApi(follower)

    # A promotion sent to a follower: the leader starts the rollout, the follower answers with it.
    for version in ("1", "2"):
        api.register("m", version, f"weights {version}".encode())
    api.promote("m", "1", "prod")
    answer = api.api("POST", "/v1/registry/m/2/promote", {"stage": "canary"}, role="operator")
    assert answer["rollout"]["started"] is True
    gate = wait_until("the first gate", lambda: (d := rollout(follower))["step"] == 2 and d, seconds=5)
    assert gate["canary_weight"] == 20
    assert {d["replica"] for d in gate["decisions"]} == {cluster(leader)["replica_id"]}
    # A rollout command sent to a follower is carried out by the leader, once.
    promoted = api.api("POST", "/v1/rollouts/m/promote", {"reason": "looks fine"}, role="operator")
    assert promoted["canary_weight"] == 50  # then a 2 s pause

    # SIGSTOP the leader in that pause and past its lease: another one leads and goes on with
    # the rollout; woken, the old one writes nothing and follows.
    old_epoch = cluster(follower)["epoch"]
    decided_before = epochs_of_decisions(database_url)
    assert leader.process is not None
    leader.process.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    others = [s for s in servers if s is not leader]
    successor = wait_for_leader(others)
    assert time.monotonic() - stopped_at <= LEASE_SECONDS + 2
    new_epoch = cluster(successor)["epoch"]
    assert new_epoch > old_epoch
    resumed = wait_until(
        "the successor to go on", lambda: (d := rollout(follower))["canary_weight"] == 80 and d, seconds=5
    )
    assert resumed["decisions"][0]["epoch"] == new_epoch
    leader.process.send_signal(signal.SIGCONT)
    wait_until("the old leader to follow", lambda: cluster(leader)["role"] == "follower", seconds=3)
    time.sleep(0.5)  # a tick or two of the woken process: it must store nothing
    assert leader_of(servers) is successor
    decided = epochs_of_decisions(database_url)
    assert decided[:len(decided_before)] == decided_before
    assert set(decided[len(decided_before):]) == {new_epoch}
    reasons = reasons_of_decisions(database_url)
    assert [sum(f"canary weight {w}" in r for r in reasons) for w in ("20 -> 50", "50 -> 80")] == [1, 1]

    # An alert sent to a follower (the old leader) rolls the canary back through the successor.
    alert = {
        "version": "4", "status": "firing",
        "alerts": [{
            "status": "firing", "labels": {"alertname": "CanaryErrors", "model": "m", "version": "2"},
            "startsAt": "2026-12-01T00:00:00Z", "fingerprint": "f00d",
        }],
    }
    sent = time.monotonic()
    received = AegisApi(leader).api("POST", "/v1/alerts/alertmanager", alert, role="operator")
    assert received["outcomes"][0]["action"] == "rollback"
    assert time.monotonic() - sent < 3
    rolled_back = rollout(leader)
    assert rolled_back["phase"] == "rolled_back"
    assert rolled_back["decisions"][0]["epoch"] == new_epoch
    again = AegisApi(follower).api("POST", "/v1/alerts/alertmanager", alert, role="operator")
    assert again["outcomes"][0]["action"] == "duplicate"
    assert _query(database_url, "SELECT count(*) FROM alert_deliveries")[0][0] == 1

    # kill -9 of the leader: another leads within lease + 2 s, under a higher epoch.
    assert successor.process is not None
    successor.process.kill()
    killed_at = time.monotonic()
    survivors = [s for s in servers if s is not successor]
    third = wait_for_leader(survivors)
    assert time.monotonic() - killed_at <= LEASE_SECONDS + 2
    assert cluster(third)["epoch"] > new_epoch
    # Restarted, the killed replica comes back under its id (no new row), as a follower.
    successor.stop()
    successor.start()
    view = cluster(successor)
    assert view["role"] == "follower"
    assert [r["replica_id"] for r in view["replicas"]] == ["r1", "r2", "r3"]
    assert all(r["live"] for r in view["replicas"])

