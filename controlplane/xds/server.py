"""The REST-JSON xDS endpoints Envoy polls, and the node view for operators.

`POST /v3/discovery:{listeners,clusters,routes,endpoints,runtime}`: answered from the
published snapshot in memory, never from the database. A poll that already runs
the current version is held open (long-poll) until the config changes or the
hold time passes, then answered 200 or an empty 304. A version a node rejected is
not sent to it again: it gets 304 on the version it accepted.

With node tokens configured (AEGIS_XDS_NODE_TOKENS), a poll without a valid
`Authorization: Bearer` token for its node id is refused (401/403) before its
body is read and leaves no trace in the node table. Without them, polls are
taken from anyone, but a version a node cannot have from us is ignored (see
nodes.py), so a made-up version neither holds nor steers a rollout.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.xds.cache import Publisher, XdsCache
from controlplane.xds.credentials import NodeCredentials, TokenCheck, Verdict
from controlplane.xds.nodes import (
    EvictionReason,
    NodeTracker,
    PollKind,
)
from controlplane.xds.schemas import DiscoveryNode, DiscoveryRequest, DiscoveryResponse, XdsNode, XdsNodes
from controlplane.xds.snapshot import ResourceType, Snapshot
from registry.auth import Role
from registry.errors import RegistryError
from registry.http import error_response, read_body
from registry.routes import Call, Operation, PathParam, Reply, parse_json_model

log = logging.getLogger(__name__)

TYPES_BY_PATH = {
    "listeners": ResourceType.LISTENER,
    "clusters": ResourceType.CLUSTER,
    "routes": ResourceType.ROUTE,
    "endpoints": ResourceType.ENDPOINT,
    "runtime": ResourceType.RUNTIME,  # the weights (RTDS), read by the routes
}
# The `type` label of the xDS metrics, the same for REST and ADS.
TYPE_LABELS = {kind: label for label, kind in TYPES_BY_PATH.items()}
# Envoy sends its whole node description (~80 KB) with every REST poll.
MAX_POLL_BYTES = 4 << 20
# Serialised responses kept: a few versions of each type, for a few resource-name sets.
BODY_CACHE_SIZE = 32
# Seconds between warnings about refused polls: a misconfigured Envoy is reported,
# a client hammering the endpoint does not flood the log.
REFUSAL_LOG_INTERVAL = 60.0


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "aegis_xds_requests",
            "xDS polls by resource type and result (ok, not_modified, bad_request, unauthorized, forbidden).",
            ["type", "result"], registry=registry,
        )
        self.unknown_versions = Counter(
            "aegis_xds_unknown_versions",
            "Polls reporting a version this server never served that node: ignored, not an ack or rejection.",
            ["type"], registry=registry,
        )
        self.node_evictions = Counter(
            "aegis_xds_node_evictions",
            "Nodes forgotten: stale (silent past the node timeout) or capacity (AEGIS_XDS_MAX_NODES full).",
            ["reason"], registry=registry,
        )
        self.tracked_nodes = Gauge(
            "aegis_xds_tracked_nodes", "Envoy nodes in the node table.", registry=registry
        )
        self.rejected = Counter(
            "aegis_xds_rejected",
            "Versions an Envoy node rejected: over REST, polled again on an older version; "
            "over ADS, a NACK (its message is in GET /v1/xds/nodes).",
            ["type"], registry=registry,
        )
        self.streams = Gauge(
            "aegis_xds_streams", "Open gRPC ADS streams by kind (sotw: state of the world, delta).",
            ["kind"], registry=registry,
        )
        self.responses = Counter(
            "aegis_xds_ads_responses", "ADS responses sent, by resource type and stream kind.",
            ["type", "kind"], registry=registry,
        )
        self.refused_streams = Counter(
            "aegis_xds_refused_streams",
            "ADS streams refused before anything was recorded, by kind and gRPC status "
            "(unauthenticated, permission_denied, invalid_argument).",
            ["kind", "code"], registry=registry,
        )
        self.live_nodes = Gauge(
            "aegis_xds_live_nodes", "Envoy nodes that must acknowledge changes (polling, genuine versions).",
            registry=registry,
        )
        self.publish_failures = Counter(
            "aegis_xds_publish_failures",
            "Snapshots not published: inconsistent or rejected by envoy --mode validate.",
            registry=registry,
        )

    def count_eviction(self, reason: EvictionReason) -> None:
        self.node_evictions.labels(reason.value).inc()


@dataclass
class XdsServer:
    cache: XdsCache
    nodes: NodeTracker
    publisher: Publisher
    metrics: XdsMetrics
    hold_seconds: float
    credentials: NodeCredentials = field(default_factory=NodeCredentials)
    # AEGIS_REPLICA_ID: named beside this replica's nodes in the node view.
    replica_id: str = ""

    def __post_init__(self) -> None:
        self.metrics.live_nodes.set_function(lambda: len(self.nodes.live_nodes(now=time.monotonic())))
        self.metrics.tracked_nodes.set_function(lambda: len(self.nodes))
        self.publisher.on_rebuild_refused(lambda _reason: self.metrics.publish_failures.inc())
        self._last_refusal_log = -REFUSAL_LOG_INTERVAL
        self._bodies: dict[tuple[str, ResourceType, tuple[str, ...]], bytes] = {}

    async def discovery(self, request: web.Request, type_label: str) -> web.StreamResponse:
        resource_type = TYPES_BY_PATH[type_label]
        # The token is checked before the body is read: a client without one costs
        # no JSON parsing and leaves nothing in the node table.
        token = self.credentials.check(request.headers.get("Authorization"))
        if token.verdict in (Verdict.MISSING, Verdict.UNKNOWN):
            return self._refuse(type_label, token, node_id=None)
        try:
            poll = _parse_poll(await read_body(request, limit=MAX_POLL_BYTES))
        except RegistryError:
            self.metrics.requests.labels(type_label, "bad_request").inc()
            raise
        if not token.allows(poll.node_id):
            return self._refuse(type_label, token, node_id=poll.node_id)
        outcome = self.nodes.observe(
            poll.node_id, poll.cluster, resource_type, poll.version_info, now=time.monotonic(),
            published=self.cache.was_published(resource_type, poll.version_info),
            authenticated=token.verdict is Verdict.ACCEPTED,
        )
        log.debug("poll %s %s at %s: %s", poll.node_id, type_label, poll.version_info[:8], outcome.kind)
        if outcome.kind is PollKind.UNKNOWN:
            self.metrics.unknown_versions.labels(type_label).inc()
        if outcome.kind is PollKind.REJECT:
            self.metrics.rejected.labels(type_label).inc()
            log.warning(
                "node %s rejected %s version %s (still runs %s); see its Envoy log for the reason",
                poll.node_id, type_label, outcome.rejected_version[:12], poll.version_info[:12] or "none",
            )
        if outcome.ack_changed and resource_type in (ResourceType.CLUSTER, ResourceType.ROUTE):
            self.publisher.request_rebuild(resource_type, poll.version_info)
        believed = outcome.kind is not PollKind.UNKNOWN
        return await self._answer(resource_type, type_label, poll, believed=believed)

    def _refuse(self, type_label: str, token: TokenCheck, *, node_id: str | None) -> web.Response:
        """401 without a token, 403 with a wrong one or one not given to this node id."""
        if token.verdict is Verdict.MISSING:
            status, code = 401, "unauthorized"
            message = (
                "this xDS endpoint needs a node token: send 'Authorization: Bearer <token>' "
                "(envoy/envoy-rest.yaml adds it from AEGIS_XDS_NODE_TOKEN in Envoy's environment)"
            )
        elif node_id is None:
            status, code = 403, "forbidden"
            message = "the node token is not one of AEGIS_XDS_NODE_TOKENS"
        else:
            status, code = 403, "forbidden"
            message = (
                "the node token is not valid for this node id "
                "(AEGIS_XDS_NODE_TOKENS pairs node ids with tokens)"
            )
        self.metrics.requests.labels(type_label, code).inc()
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            self._last_refusal_log = now
            log.warning("refused an xDS poll (%s): %s; further refusals are only counted for a minute",
                        status, message)
        response = error_response(status, code, message)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def _answer(
        self, resource_type: ResourceType, type_label: str, poll: _Poll, *, believed: bool
    ) -> web.StreamResponse:
        deadline = time.monotonic() + (self.hold_seconds if poll.version_info else 0)
        while True:
            snapshot = self.cache.current
            version = snapshot.versions[resource_type]
            if version != poll.version_info and not self.nodes.has_rejected(
                poll.node_id, resource_type, version
            ):
                body = self._body(snapshot, resource_type, poll.resource_names)
                self.nodes.record_served(poll.node_id, resource_type, version, awaiting_ack=believed)
                self.metrics.requests.labels(type_label, "ok").inc()
                return web.Response(body=body, content_type="application/json")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self.cache.wait_for_change(remaining):
                self.metrics.requests.labels(type_label, "not_modified").inc()
                return web.Response(status=304)

    def _body(self, snapshot: Snapshot, resource_type: ResourceType, names: tuple[str, ...]) -> bytes:
        """The serialised response, once per version and resource names: every node asks the same."""
        key = (snapshot.versions[resource_type], resource_type, names)
        body = self._bodies.get(key)
        if body is None:
            body = json.dumps(snapshot.discovery_response(resource_type, names)).encode()
            self._bodies[key] = body
            while len(self._bodies) > BODY_CACHE_SIZE:
                self._bodies.pop(next(iter(self._bodies)))
        return body

    def node_view(self) -> XdsNodes:
        now = time.monotonic()
        wall_offset = time.time() - now
        return XdsNodes(
            nodes=[
                XdsNode.of(
                    node, live=self.nodes.is_live(node, now=now), wall_offset=wall_offset,
                    replica=self.replica_id,
                )
                for node in sorted(self.nodes.all_nodes(now=now), key=lambda n: n.node_id)
            ],
            current={kind.name.lower(): version for kind, version in self.cache.current.versions.items()},  # type: ignore[misc]
            current_ads={kind.name.lower(): v for kind, v in self.cache.current.ads_versions.items()},  # type: ignore[misc]
            last_publish_error=self.publisher.last_error,
            last_publish_error_at=(
                None if self.publisher.last_error_at is None
                else datetime.fromtimestamp(self.publisher.last_error_at, UTC)
            ),
        )


@dataclass(frozen=True)
class _Poll:
    node_id: str
    cluster: str
    version_info: str
    resource_names: tuple[str, ...]


def _parse_poll(raw: bytes) -> _Poll:
    request = parse_json_model(DiscoveryRequest, raw or b"{}", what="the discovery request")
    node = request.node or DiscoveryNode()
    return _Poll(
        node_id=node.id or "unknown", cluster=node.cluster or "",
        version_info=request.version_info or "", resource_names=tuple(request.resource_names or ()),
    )


SERVER = web.AppKey("xds_server", XdsServer)
XDS_TYPE = PathParam(
    "type", str, description="the resource type Envoy polls: LDS, CDS, RDS, EDS or RTDS (runtime)",
    enum=tuple(TYPES_BY_PATH),
)


async def discover(call: Call[None, None]) -> web.StreamResponse:
    return await call.app[SERVER].discovery(call.request, call.path["type"])


async def list_nodes(call: Call[None, None]) -> XdsNodes:
    return call.app[SERVER].node_view()


DISCOVER = Operation(
    "post", "/v3/discovery:{type}", "discover", "Envoy's REST-JSON xDS poll (LDS, CDS, RDS, EDS, RTDS)",
    "xds", None, discover, params=(XDS_TYPE,), body=DiscoveryRequest, reads_body=True,
    description=(
        "No API token. With AEGIS_XDS_NODE_TOKENS set, a node token in 'Authorization: "
        "Bearer' (added by envoy/envoy-rest.yaml from AEGIS_XDS_NODE_TOKEN) valid for the poll's "
        "node id; without it 401/403 and the poll is not recorded. With AEGIS_XDS_LISTEN set, "
        "served only on that listener. A poll that already has the current version is held "
        "open (AEGIS_XDS_HOLD_SECONDS) until the config changes, else answered 304. A "
        "node that polls again on an older version rejected the newer one; a version never "
        "served to the node is ignored."
    ),
    examples={
        "first-cds-poll": (
            "Envoy's first CDS poll",
            {
                "version_info": "",
                "node": {"id": "aegis-envoy-1", "cluster": "model-gateway"},
                "resource_names": [],
                "type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            },
        )
    },
    responses={
        200: Reply("a newer config", DiscoveryResponse),
        304: Reply("the node already runs the current version (after the hold)"),
    },
    errors={
        # 401/403 with AEGIS_XDS_NODE_TOKENS: a node token, not an API role (see description).
        400: "not a discovery request (not JSON)",
        404: "an unknown resource type, or discovery is on AEGIS_XDS_LISTEN",
        422: "a bad node, resource_names or version_info, or one too long to be real",
    },
)
NODE_VIEW = Operation(
    "get", "/v1/xds/nodes", "listXdsNodes",
    "Each Envoy node: live or not, transport, authenticated, acknowledged, served and rejected "
    "versions (with Envoy's message for an ADS NACK)",
    "xds", Role.VIEWER, list_nodes, responses={200: Reply("the nodes", XdsNodes)},
)
OPERATIONS = (DISCOVER, NODE_VIEW)
