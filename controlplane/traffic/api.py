"""HTTP handlers for traffic weights (`/v1/traffic/{model}`) and endpoints (`/v1/endpoints`)."""

from __future__ import annotations

from aiohttp import web

from controlplane.traffic.schemas import (
    EndpointAck,
    EndpointBody,
    EndpointList,
    EndpointWithdrawal,
    EndpointWithdrawn,
    TrafficBody,
    TrafficDocument,
)
from controlplane.traffic.service import TrafficService
from registry.auth import Role
from registry.routes import Answer, Call, Operation, Reply
from registry.schemas import CANARY, MODEL, MODEL_PARAM, STABLE

TRAFFIC = web.AppKey("traffic_service", TrafficService)


async def get_traffic(call: Call[None, None]) -> TrafficDocument:
    return TrafficDocument.of(call.app[TRAFFIC], call.path["model"])


async def put_traffic(call: Call[TrafficBody, None]) -> TrafficDocument:
    traffic = call.app[TRAFFIC]
    model_name = call.path["model"]
    await traffic.set_traffic(model_name, call.body.request(), actor=call.actor)
    return TrafficDocument.of(traffic, model_name)


async def list_endpoints(call: Call[None, None]) -> EndpointList:
    return EndpointList.of(call.app[TRAFFIC])


async def announce_endpoint(call: Call[EndpointBody, None]) -> Answer:
    announcement = call.body.announcement()
    is_new = await call.app[TRAFFIC].announce(announcement, actor=call.actor)
    ack = EndpointAck(
        model_name=announcement.model_name, version=announcement.version, address=announcement.address,
        port=announcement.port, ttl_seconds=announcement.ttl_seconds, new=is_new,
    )
    return Answer(201 if is_new else 200, ack)


async def withdraw_endpoint(call: Call[EndpointWithdrawal, None]) -> EndpointWithdrawn:
    await call.app[TRAFFIC].withdraw(call.body.announcement())
    return EndpointWithdrawn(removed=True)


_ENDPOINT = {"model_name": MODEL, "version": CANARY, "address": "10.0.0.12", "port": 8502}

OPERATIONS = (
    Operation(
        "get", "/v1/traffic/{model}", "getTraffic",
        "A model's weights, endpoints and whether Envoy runs them",
        "traffic", Role.VIEWER, get_traffic, params=(MODEL_PARAM,),
        responses={200: Reply("the model's traffic", TrafficDocument)},
        errors={404: "the model is not registered", 422: "the model name is not valid"},
    ),
    Operation(
        "put", "/v1/traffic/{model}", "setTraffic",
        "Set the weights between prod and canary, header matches and mirroring",
        "traffic", Role.OPERATOR, put_traffic, params=(MODEL_PARAM,), body=TrafficBody,
        examples={
            "ten-percent": (
                "10% to the canary; requests with x-canary: always reach it",
                {
                    "weights": {STABLE: 90, CANARY: 10},
                    "match": [{"headers": {"x-canary": "always"}}],
                    "mirror": {"percent": 0},
                },
            )
        },
        responses={200: Reply("the traffic now", TrafficDocument)},
        errors={
            404: "the model is not registered",
            409: "a rollout drives this model's traffic: pause or abort it first",
            422: "weights naming other than the prod and canary versions, a sum of 0, a bad "
            "match or mirror, or a config Envoy rejects",
        },
    ),
    Operation(
        "get", "/v1/endpoints", "listEndpoints", "Every live endpoint with its expiry",
        "traffic", Role.VIEWER, list_endpoints, responses={200: Reply("the endpoints", EndpointList)},
    ),
    Operation(
        "post", "/v1/endpoints", "announceEndpoint", "Add or renew a model server's endpoint",
        "traffic", Role.OPERATOR, announce_endpoint, body=EndpointBody,
        description="An endpoint not renewed within its TTL drops out of Envoy's config.",
        examples={
            "canary-server": ("the canary's server, renewed every 10 s", {**_ENDPOINT, "ttl_seconds": 30})
        },
        responses={201: Reply("a new endpoint", EndpointAck), 200: Reply("an endpoint renewed", EndpointAck)},
        errors={
            404: "the version is not registered",
            422: "a bad name, version, IP address, port or ttl_seconds",
        },
    ),
    Operation(
        "delete", "/v1/endpoints", "withdrawEndpoint", "Withdraw an endpoint at once",
        "traffic", Role.OPERATOR, withdraw_endpoint, body=EndpointWithdrawal,
        examples={"canary-server": ("the server is stopping", _ENDPOINT)},
        responses={200: Reply("withdrawn", EndpointWithdrawn)},
        errors={404: "no such endpoint", 422: "a bad name, version, IP address or port"},
    ),
)
