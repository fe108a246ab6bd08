"""`GET /v1/cluster`: this replica, the leader, the epoch and every replica's heartbeat; and the metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from pydantic import Field

from controlplane.cluster.leadership import Elector
from controlplane.cluster.store import ReplicaRow, live
from registry.auth import Role
from registry.boundary import ResponseModel
from registry.fields import Timestamp
from registry.routes import Call, Operation, Reply

ELECTOR = web.AppKey("elector", Elector)


class ReplicaDocument(ResponseModel):
    replica_id: str
    address: str = Field(description="the URL the replica's API is reached at (its AEGIS_PUBLIC_URL)")
    hostname: str
    pid: int
    version: str = Field(description="the Aegis version it runs")
    started_at: Timestamp
    last_seen: Timestamp = Field(description="its last heartbeat, on the database's clock")
    live: bool = Field(description="a heartbeat within the lease time")
    leader: bool

    @classmethod
    def of(cls, row: ReplicaRow, *, live: bool, leader: bool) -> ReplicaDocument:
        return cls(
            replica_id=row.replica_id, address=row.address, hostname=row.hostname, pid=row.pid,
            version=row.version, started_at=row.started_at, last_seen=row.last_seen, live=live, leader=leader,
        )


class ClusterDocument(ResponseModel):
    replica_id: str = Field(description="the replica that answered (AEGIS_REPLICA_ID or its kept default)")
    role: str = Field(description="`leader` or `follower`: what the answering replica is now")
    leader_id: str | None = Field(description="the replica holding an unexpired lease; null while none does")
    epoch: int = Field(description="the lease's epoch: one more at every change of leader")
    lease_expires_at: Timestamp
    lease_seconds: float
    replicas: list[ReplicaDocument]


async def get_cluster(call: Call[None, None]) -> ClusterDocument:
    return await cluster_document(call.app[ELECTOR])


async def cluster_document(elector: Elector) -> ClusterDocument:
    """What `GET /v1/cluster` answers (the console's cluster page shows the same)."""
    lease = await elector.leases.read()
    rows, now = await elector.replicas.all()
    within = elector.timing.lease_seconds
    return ClusterDocument(
        replica_id=elector.replica_id,
        role="leader" if elector.leading else "follower",
        leader_id=lease.leader_id,
        epoch=lease.epoch,
        lease_expires_at=lease.expires_at,
        lease_seconds=within,
        replicas=[
            ReplicaDocument.of(
                row, live=live(row, now, within_seconds=within), leader=row.replica_id == lease.leader_id
            )
            for row in rows
        ],
    )


def register_metrics(registry: CollectorRegistry, elector: Elector) -> None:
    leader = Gauge(
        "aegis_leader", "1 while this replica leads (runs rollouts, alerts, expiry)", registry=registry
    )
    leader.set_function(lambda: 1.0 if elector.leading else 0.0)
    replicas = Gauge(
        "aegis_replicas", "replicas with a heartbeat within the lease time, as this one last saw",
        registry=registry,
    )
    replicas.set_function(lambda: float(elector.live_replicas))
    epoch = Gauge(
        "aegis_leader_epoch", "the epoch this replica leads under (0 on a follower)", registry=registry
    )
    epoch.set_function(lambda: float(fence.epoch) if (fence := elector.fence) is not None else 0.0)


OPERATIONS = (
    Operation(
        "get", "/v1/cluster", "getCluster", "This replica, the leader, the lease's epoch and every replica",
        "process", Role.VIEWER, get_cluster,
        description=(
            "Every replica of one database heartbeats into it; one holds the leader lease and runs "
            "rollouts, alert actions and endpoint expiry. The same answer (but `replica_id` and `role`) "
            "from every replica."
        ),
        responses={200: Reply("the cluster", ClusterDocument)},
    ),
)
