"""Models of the xDS REST poll Envoy sends and of the node view operators read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar, Literal

from pydantic import Field

from controlplane.xds.nodes import (
    NODE_CLUSTER_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    VERSION_MAX_CHARS,
    NodeState,
    Transport,
)
from registry.boundary import ForeignRequest, ResponseModel
from registry.fields import Timestamp

# Node fields are kept per node: ones too long to be real are refused, never cut
# (nodes.py says why each bound is what it is).
MAX_RESOURCE_NAMES = 10_000
MAX_TYPE_URL_CHARS = 256

TypeName = Literal["listener", "cluster", "route", "endpoint", "runtime"]


class DiscoveryNode(ForeignRequest):
    """Envoy's node description; Aegis reads `id` and `cluster` and ignores the rest."""

    id: str | None = Field(default=None, max_length=NODE_ID_MAX_CHARS)
    cluster: str | None = Field(default=None, max_length=NODE_CLUSTER_MAX_CHARS)


class DiscoveryError(ForeignRequest):
    """google.rpc.Status of a NACK; `details` (free-form) is dropped."""

    code: int | None = None
    message: str | None = Field(default=None, max_length=4096)


class DiscoveryRequest(ForeignRequest):
    version_info: str | None = Field(
        default=None, max_length=VERSION_MAX_CHARS, description="the version the node runs; empty first"
    )
    node: DiscoveryNode | None = None
    resource_names: list[str] | None = Field(default=None, max_length=MAX_RESOURCE_NAMES)
    type_url: str | None = Field(default=None, max_length=MAX_TYPE_URL_CHARS)
    response_nonce: str | None = Field(default=None, max_length=MAX_TYPE_URL_CHARS)
    error_detail: DiscoveryError | None = None
    # Every field read is shallow and the node's metadata (most of the ~80 KB) is dropped:
    # the depth walk would double the cost of the hottest request for nothing.
    json_max_depth: ClassVar[int | None] = None


class DiscoveryResource(ResponseModel):
    model_config = ResponseModel.model_config | {"extra": "allow"}

    type: str = Field(alias="@type")


class DiscoveryResponse(ResponseModel):
    version_info: str = Field(description="SHA-256 of the canonical config")
    type_url: str
    resources: list[DiscoveryResource]
    nonce: str


class TypeDocument(ResponseModel):
    acked_version: str
    served_version: str
    rejected_versions: list[str]
    rejection_message: str = Field(
        description="Envoy's message with the last NACK (ADS); empty over REST (it carries none)"
    )


class XdsNode(ResponseModel):
    node_id: str
    cluster: str
    live: bool = Field(description="polls and must acknowledge changes")
    authenticated: bool = Field(
        description="its last poll or stream had a valid node token or ADS client certificate naming it"
    )
    transport: Transport = Field(description="how it last spoke: rest, ads (state of the world) or delta")
    streams: int = Field(description="open gRPC ADS streams; a node with one is live though it sends nothing")
    replica: str = Field(
        description="the Aegis replica it is attached to (AEGIS_REPLICA_ID); with several replicas on "
        "PostgreSQL every replica lists every replica's nodes"
    )
    first_seen: Timestamp
    last_seen: Timestamp
    types: dict[TypeName, TypeDocument]

    @classmethod
    def of(cls, node: NodeState, *, live: bool, wall_offset: float, replica: str = "") -> XdsNode:
        """`wall_offset` turns the tracker's monotonic seconds into wall-clock time; `replica`
        names this replica (for its own nodes)."""
        return cls(
            node_id=node.node_id, cluster=node.cluster, live=live, authenticated=node.authenticated,
            transport=node.transport, streams=node.streams, replica=node.replica or replica,
            first_seen=datetime.fromtimestamp(node.first_seen + wall_offset, UTC),
            last_seen=datetime.fromtimestamp(node.last_seen + wall_offset, UTC),
            types={
                kind.name.lower(): TypeDocument(  # type: ignore[misc]
                    acked_version=state.acked_version, served_version=state.served_version,
                    rejected_versions=list(state.rejected_versions),
                    rejection_message=state.rejection_message,
                )
                for kind, state in sorted(node.types.items())
            },
        )


class XdsNodes(ResponseModel):
    nodes: list[XdsNode]
    current: dict[TypeName, str] = Field(description="the versions served over REST")
    current_ads: dict[TypeName, str] = Field(
        description="the versions served over ADS (the listener's differs: it takes its routes over ADS)"
    )
    last_publish_error: str = Field(description="empty when the last publish worked")
    last_publish_error_at: Timestamp | None
