"""What each console page shows, derived from the API's own documents (pure).

Every function here takes the JSON documents the API answers with (`model_dump(mode="json")`
of the same response models) and returns plain values for a template, so a page shows
exactly what `GET /v1/...` shows. Escaping is the templates' job (Jinja autoescape):
nothing here builds markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Document = Mapping[str, Any]

ACTIVE_PHASES = ("progressing", "paused")
# Console button -> (the API's command, promote's `full`), in the order the buttons appear.
ROLLOUT_ACTIONS: Mapping[str, tuple[str, bool]] = {
    "promote": ("promote", False),
    "promote-full": ("promote", True),
    "pause": ("pause", False),
    "resume": ("resume", False),
    "abort": ("abort", False),
}

# Shown where a value is absent.
NONE = "\u2013"


def when(timestamp: str | None) -> str:
    """An API timestamp (RFC 3339) as UTC wall time a reader can scan down a column."""
    if not timestamp:
        return NONE
    return datetime.fromisoformat(timestamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- the models page -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmView:
    version: str
    stage: str  # "prod" or "canary"
    weight: int
    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class TrafficView:
    arms: tuple[ArmView, ...]
    acknowledged: bool
    nodes: str  # "1 of 1 Envoy nodes"
    owner: str
    xds_version: str
    warning: str  # a version with weight and no endpoint


@dataclass(frozen=True)
class ModelRow:
    name: str
    prod: str
    canary: str
    versions: int
    traffic: TrafficView | None
    rollout_phase: str
    rollout_step: str


def traffic_view(traffic: Document) -> TrafficView:
    """`GET /v1/traffic/{model}`: the weights Aegis wants and whether every live Envoy runs them."""
    weights: Mapping[str, int] = traffic["weights"]
    arms = tuple(
        ArmView(
            version=version,
            stage="canary" if version == traffic.get("canary") else "prod",
            weight=weight,
            endpoints=tuple(traffic["endpoints"].get(version, ())),
        )
        for version, weight in sorted(weights.items(), key=lambda item: item[0] == traffic.get("canary"))
    )
    starved = [arm.version for arm in arms if arm.weight > 0 and not arm.endpoints]
    return TrafficView(
        arms=arms,
        # With no live Envoy node the API's `acked` holds vacuously: nothing runs the split yet.
        acknowledged=bool(traffic["acked"]) and traffic["nodes_total"] > 0,
        nodes=(
            f"{traffic['nodes_acked']} of {traffic['nodes_total']} Envoy nodes"
            if traffic["nodes_total"] else "no live Envoy node"
        ),
        owner=traffic.get("owner") or "default",
        xds_version=str(traffic.get("xds_version", ""))[:12],
        warning=(
            f"version {', '.join(starved)} has weight but no live endpoint: it gets no traffic until "
            "its model server announces itself"
            if starved else ""
        ),
    )


def model_rows(
    models: Sequence[Document], traffic: Mapping[str, Document], rollouts: Mapping[str, Document]
) -> list[ModelRow]:
    """`GET /v1/registry/models`, each model beside its traffic and its latest rollout."""
    rows = []
    for model in models:
        name = model["model_name"]
        rollout = rollouts.get(name)
        rows.append(
            ModelRow(
                name=name,
                prod=model["stages"].get("prod") or NONE,
                canary=model["stages"].get("canary") or NONE,
                versions=model["versions"],
                traffic=traffic_view(traffic[name]) if name in traffic else None,
                rollout_phase=rollout["phase"] if rollout else "",
                rollout_step=_step(rollout) if rollout else "",
            )
        )
    return rows


# --- one model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionView:
    version: str
    stage: str
    checksum: str
    size_bytes: int
    key_id: str
    algorithm: str
    signature_ok: bool
    created: str
    created_by: str
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TimelineEntry:
    at: str
    version: str
    from_stage: str
    to_stage: str
    action: str
    actor: str
    reason: str


@dataclass(frozen=True)
class RolloutRow:
    id: int
    phase: str
    stable_version: str
    canary_version: str
    policy: str
    started: str
    started_by: str
    decisions: int
    message: str


@dataclass(frozen=True)
class ModelPage:
    name: str
    prod: str
    canary: str
    versions: tuple[VersionView, ...]
    timeline: tuple[TimelineEntry, ...]
    rollouts: tuple[RolloutRow, ...]


def model_page(model: Document, signatures: Mapping[str, bool], history: Document) -> ModelPage:
    """`GET /v1/registry/{model}` and `GET /v1/rollouts/{model}/history` on one page.

    `signatures`: version -> whether its signature verifies with the key it names.
    """
    versions = [
        VersionView(
            version=v["version"], stage=v["stage"], checksum=v["checksum"], size_bytes=v["size_bytes"],
            key_id=v["key_id"], algorithm=v["algorithm"], signature_ok=signatures.get(v["version"], False),
            created=when(v["created_at"]), created_by=v["created_by"],
            metadata=metadata_items(v["metadata"]),
        )
        for v in model["versions"]
    ]
    entries = [
        (entry["at"], v["version"], entry)
        for v in model["versions"]
        for entry in v["metadata"]["_registry"]["promotion_history"]
    ]
    # Newest first; ISO timestamps with the same offset sort as text.
    entries.sort(key=lambda item: datetime.fromisoformat(item[0]), reverse=True)
    timeline = tuple(
        TimelineEntry(
            at=when(at), version=version, from_stage=entry["from_stage"], to_stage=entry["to_stage"],
            action=entry["action"], actor=entry["actor"], reason=entry["reason"],
        )
        for at, version, entry in entries
    )
    rollouts = tuple(
        RolloutRow(
            id=r["id"], phase=r["phase"], stable_version=r["stable_version"],
            canary_version=r["canary_version"], policy=r["policy"], started=when(r["started_at"]),
            started_by=r["started_by"], decisions=r["decision_count"], message=r["message"],
        )
        for r in history["rollouts"]
    )
    return ModelPage(
        name=model["model_name"], prod=model["stages"].get("prod") or NONE,
        canary=model["stages"].get("canary") or NONE, versions=tuple(versions), timeline=timeline,
        rollouts=rollouts,
    )


def metadata_items(metadata: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The registered metadata as (key, value) text, without the registry's own records."""
    return tuple(
        (key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        for key, value in sorted(metadata.items())
        if key != "_registry"
    )


# --- a rollout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerdictView:
    metric: str
    verdict: str
    value: str
    message: str


@dataclass(frozen=True)
class DecisionView:
    at: str
    phase: str
    step: int
    canary_weight: int
    reason: str
    verdicts: tuple[VerdictView, ...]
    command: str
    actor: str
    acked: str


@dataclass(frozen=True)
class RolloutPage:
    id: int
    model: str
    policy: str
    phase: str
    active: bool
    stable_version: str
    canary_version: str
    step: str
    desired_weight: int
    served_weight: str  # what the Envoy nodes run, or why it is not one number
    served_nodes: str
    acknowledged: bool
    message: str
    started: str
    started_by: str
    decisions: tuple[DecisionView, ...]
    actions: tuple[str, ...]  # the buttons an operator gets now


def rollout_page(rollout: Document, *, can_act: bool) -> RolloutPage:
    """`GET /v1/rollouts/{model}` (or a past rollout): where it stands and every decision's why."""
    phase = rollout["phase"]
    served = rollout.get("served_canary_weights")
    actual = rollout.get("actual_canary_weight")
    if served is None:  # a past rollout: what Envoy ran then is not kept
        served_weight, served_nodes = NONE, ""
    elif actual is not None:
        served_weight, served_nodes = f"{actual} %", _nodes(served)
    elif not served:
        served_weight, served_nodes = "no Envoy node polled yet", ""
    else:
        served_weight, served_nodes = "nodes differ", _nodes(served)
    return RolloutPage(
        id=rollout["id"], model=rollout["model_name"], policy=rollout["policy"], phase=phase,
        active=phase in ACTIVE_PHASES, stable_version=rollout["stable_version"],
        canary_version=rollout["canary_version"], step=_step(rollout),
        desired_weight=rollout["canary_weight"], served_weight=served_weight, served_nodes=served_nodes,
        acknowledged=rollout["acknowledged"], message=rollout["message"], started=when(rollout["started_at"]),
        started_by=rollout["started_by"],
        decisions=tuple(_decision(d) for d in rollout["decisions"]),
        actions=actions_for(phase) if can_act else (),
    )


def actions_for(phase: str) -> tuple[str, ...]:
    """The commands the API takes in this phase (the machine ignores the others)."""
    if phase == "progressing":
        return ("promote", "promote-full", "pause", "abort")
    if phase == "paused":
        return ("promote", "promote-full", "resume", "abort")
    return ()


def _decision(decision: Document) -> DecisionView:
    return DecisionView(
        at=when(decision["at"]), phase=decision["phase"], step=decision["step"],
        canary_weight=decision["canary_weight"], reason=decision["reason"],
        verdicts=tuple(
            VerdictView(
                metric=v["metric"], verdict=v["verdict"],
                value=NONE if v["value"] is None else f"{v['value']:.4g}", message=v["message"],
            )
            for v in decision.get("verdicts") or ()
        ),
        command=decision.get("command") or "", actor=decision.get("actor") or "",
        acked=when(decision.get("acked_at")) if decision.get("acked_at") else "",
    )


def _step(rollout: Document) -> str:
    steps = rollout.get("steps")
    return f"{rollout['step']} of {steps}" if steps else str(rollout["step"])


def _nodes(served: Sequence[Document]) -> str:
    return ", ".join(
        f"{s['nodes']} node{'s' if s['nodes'] != 1 else ''} at "
        + ("routes not from this process" if s["canary_weight"] is None else f"{s['canary_weight']} %")
        for s in served
    )


# --- alerts, Envoy nodes and replicas --------------------------------------------------------------


@dataclass(frozen=True)
class AlertView:
    received: str
    alertname: str
    model: str
    status: str
    action: str
    starts_at: str


ACTION_TEXT: Mapping[str, str] = {
    "rollback": "rolled the canary back",
    "recorded_resolved": "recorded (resolved)",
    "recorded_no_model_label": "recorded: no model label",
    "recorded_no_active_rollout": "recorded: no active rollout",
    "recorded_other_version": "recorded: about another version",
    "recorded_rollback_disabled": "recorded: the policy does not roll back on alerts",
}


def alert_views(alerts: Sequence[Document]) -> list[AlertView]:
    return [
        AlertView(
            received=when(a["received_at"]), alertname=a["alertname"], model=a.get("model_name") or NONE,
            status=a["status"], action=ACTION_TEXT.get(a["action"], a["action"]), starts_at=a["starts_at"],
        )
        for a in alerts
    ]


@dataclass(frozen=True)
class NodeTypeView:
    type: str
    acked: str
    served: str
    rejected: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class NodeView:
    node_id: str
    cluster: str
    replica: str  # the Aegis replica it is attached to
    live: bool
    authenticated: bool
    transport: str
    last_seen: str
    types: tuple[NodeTypeView, ...]


def node_views(nodes: Document) -> list[NodeView]:
    """`GET /v1/xds/nodes`: per node and type, what it runs, was sent and refused, and Envoy's why."""
    return [
        NodeView(
            node_id=n["node_id"], cluster=n["cluster"], replica=n["replica"] or NONE, live=n["live"],
            authenticated=n["authenticated"], transport=n["transport"], last_seen=when(n["last_seen"]),
            types=tuple(
                NodeTypeView(
                    type=name, acked=t["acked_version"][:12] or NONE, served=t["served_version"][:12] or NONE,
                    rejected=tuple(v[:12] for v in t["rejected_versions"]), message=t["rejection_message"],
                )
                for name, t in n["types"].items()
            ),
        )
        for n in nodes["nodes"]
    ]


@dataclass(frozen=True)
class ReplicaView:
    replica_id: str
    address: str
    host: str  # "hostname, pid 123"
    version: str
    started: str
    last_seen: str
    live: bool
    leader: bool
    this: bool  # the replica that rendered the page


@dataclass(frozen=True)
class ClusterPage:
    replica_id: str
    role: str
    leader: str
    epoch: int
    lease_expires: str
    lease_seconds: str
    live_replicas: str  # "2 of 3 replicas live"
    replicas: tuple[ReplicaView, ...]


def cluster_page(cluster: Document) -> ClusterPage:
    """`GET /v1/cluster`: who answered, who leads under which epoch, and every replica's heartbeat."""
    replicas = tuple(
        ReplicaView(
            replica_id=r["replica_id"], address=r["address"], host=f"{r['hostname']}, pid {r['pid']}",
            version=r["version"], started=when(r["started_at"]), last_seen=when(r["last_seen"]),
            live=r["live"], leader=r["leader"], this=r["replica_id"] == cluster["replica_id"],
        )
        for r in cluster["replicas"]
    )
    live = sum(r.live for r in replicas)
    return ClusterPage(
        replica_id=cluster["replica_id"], role=cluster["role"],
        # Between one lease's end and the next acquisition no replica leads: nothing acts then.
        leader=cluster["leader_id"] or "none: no replica holds the lease now",
        epoch=cluster["epoch"], lease_expires=_lease_end(cluster["lease_expires_at"]),
        lease_seconds=f"{cluster['lease_seconds']:g} s",
        live_replicas=f"{live} of {len(replicas)} replica{'s' if len(replicas) != 1 else ''} live",
        replicas=replicas,
    )


def _lease_end(expires_at: str) -> str:
    # A SQLite database has one replica, whose lease the store sets to end in the year 9999.
    if datetime.fromisoformat(expires_at).year >= 9999:
        return "held for good: the only replica on SQLite"
    return f"held until {when(expires_at)}"
