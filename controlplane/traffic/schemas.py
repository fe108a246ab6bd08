"""Request and response models for traffic weights and model endpoints."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from controlplane.traffic.service import (
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    MAX_WEIGHT,
    EndpointAnnouncement,
    TrafficRequest,
    TrafficService,
)
from registry.boundary import RequestModel, ResponseModel
from registry.fields import ModelName, Timestamp, Version

MAX_HEADER_MATCHES = 16
MAX_HEADERS_PER_MATCH = 16
MAX_HEADER_NAME_CHARS = 128
MAX_HEADER_VALUE_CHARS = 1024


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(
            f"{value[:64]!r} must be an IP address (Envoy's STATIC clusters resolve no names)"
        ) from None


IpAddress = Annotated[
    str,
    Field(max_length=64),
    AfterValidator(_ip_address),
    WithJsonSchema(
        {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
         "description": "an IP address: Envoy's STATIC clusters resolve no names"}
    ),
]
Port = Annotated[int, Field(ge=1, le=65535)]
Weight = Annotated[int, Field(ge=0, le=MAX_WEIGHT)]
HeaderName = Annotated[str, Field(min_length=1, max_length=MAX_HEADER_NAME_CHARS)]
HeaderValue = Annotated[str, Field(max_length=MAX_HEADER_VALUE_CHARS)]


class HeaderMatch(RequestModel):
    headers: dict[HeaderName, HeaderValue] = Field(min_length=1, max_length=MAX_HEADERS_PER_MATCH)


class Mirror(RequestModel):
    """Share of requests shadowed to the canary, responses discarded."""

    percent: int = Field(default=0, ge=0, le=100)


class TrafficBody(RequestModel):
    weights: dict[Version, Weight] = Field(
        min_length=1, max_length=2,
        description="version -> weight; only the prod and canary versions; a positive sum",
    )
    match: list[HeaderMatch] = Field(
        default_factory=list, max_length=MAX_HEADER_MATCHES,
        description="requests with all these headers always reach the canary",
    )
    mirror: Mirror = Field(default_factory=lambda: Mirror())

    @model_validator(mode="after")
    def _some_weight(self) -> TrafficBody:
        if sum(self.weights.values()) <= 0:
            raise ValueError("weights must sum to more than 0")
        return self

    def request(self) -> TrafficRequest:
        return TrafficRequest(
            dict(self.weights), [dict(m.headers) for m in self.match], self.mirror.percent
        )


class EndpointWithdrawal(RequestModel):
    model_name: ModelName
    version: Version
    address: IpAddress
    port: Port

    def announcement(self) -> EndpointAnnouncement:
        return EndpointAnnouncement(self.model_name, self.version, self.address, self.port)


class EndpointBody(EndpointWithdrawal):
    ttl_seconds: int = Field(default=DEFAULT_TTL_SECONDS, ge=1, le=MAX_TTL_SECONDS)

    def announcement(self) -> EndpointAnnouncement:
        return EndpointAnnouncement(self.model_name, self.version, self.address, self.port, self.ttl_seconds)


class HeaderMatchDocument(ResponseModel):
    headers: dict[str, str]


class MirrorDocument(ResponseModel):
    percent: int


class TrafficDocument(ResponseModel):
    model_name: str
    weights: dict[str, int]
    prod: str | None
    canary: str | None
    endpoints: dict[str, list[str]] = Field(description="version -> `address:port` list")
    endpoint_counts: dict[str, int] = Field(
        description="version -> live endpoints; a version with weight and 0 gets no traffic"
    )
    match: list[HeaderMatchDocument] = Field(
        description="requests with these headers always reach the canary (as PUT takes it)"
    )
    mirror: MirrorDocument
    owner: Literal["operator", "rollout"] | None
    xds_version: str = Field(
        description="the xDS version carrying these weights: the runtime (RTDS) version, or the route "
        "version for a model with one serving version"
    )
    acked: bool = Field(description="every live Envoy node runs these weights")
    nodes_acked: int = Field(ge=0)
    nodes_total: int = Field(ge=0)

    @classmethod
    def of(cls, traffic: TrafficService, model_name: str) -> TrafficDocument:
        stages = traffic.live_stages(model_name)
        row = traffic.settings.get(model_name)
        weights = traffic.weights(model_name)
        ack = traffic.acknowledgement(model_name)
        return cls(
            model_name=model_name, weights=weights, prod=stages.prod, canary=stages.canary,
            endpoints={
                version: [f"{a}:{p}" for a, p in sorted(traffic.live_endpoints(model_name, version))]
                for version in weights
            },
            endpoint_counts={version: traffic.endpoint_count(model_name, version) for version in weights},
            match=[HeaderMatchDocument(headers=headers) for headers in (row.match if row else [])],
            mirror=MirrorDocument(percent=row.mirror_percent if row else 0),
            owner=row.owner if row else None,  # type: ignore[arg-type]
            xds_version=ack.xds_version, acked=ack.acked,
            nodes_acked=ack.nodes_acked, nodes_total=ack.nodes_total,
        )


class EndpointAck(ResponseModel):
    model_name: str
    version: str
    address: str
    port: int
    ttl_seconds: int
    new: bool


class EndpointWithdrawn(ResponseModel):
    removed: Literal[True]


class EndpointDocument(ResponseModel):
    model_name: str
    version: str
    address: str
    port: int
    expires_at: Timestamp | None = Field(description="null for a static endpoint: it never expires")
    static: bool = Field(description="from the configuration (AEGIS_STATIC_ENDPOINTS), not announced")


class EndpointList(ResponseModel):
    endpoints: list[EndpointDocument]

    @classmethod
    def of(cls, traffic: TrafficService) -> EndpointList:
        announced = [
            EndpointDocument(
                model_name=model_name, version=version, address=address, port=port, expires_at=expires_at,
                static=False,
            )
            for (model_name, version), members in traffic.endpoints.items()
            for (address, port), expires_at in members.items()
        ]
        static = [
            EndpointDocument(
                model_name=model_name, version=version, address=address, port=port, expires_at=None,
                static=True,
            )
            for (model_name, version), members in traffic.static_endpoints.items()
            for address, port in members
        ]
        return cls(endpoints=sorted(
            announced + static, key=lambda e: (e.model_name, e.version, e.address, e.port, e.static)
        ))
