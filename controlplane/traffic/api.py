"""HTTP handlers for traffic weights (`/v1/traffic/{model}`) and endpoints (`/v1/endpoints`)."""

from __future__ import annotations

from aiohttp import web

from controlplane.traffic.service import EndpointAnnouncement, TrafficRequest, TrafficService
from registry.auth import Role
from registry.http import authorize, read_json

TRAFFIC = web.AppKey("traffic_service", TrafficService)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/traffic/{model}", get_traffic)
    app.router.add_put("/v1/traffic/{model}", put_traffic)
    app.router.add_get("/v1/endpoints", list_endpoints)
    app.router.add_post("/v1/endpoints", announce_endpoint)
    app.router.add_delete("/v1/endpoints", withdraw_endpoint)


async def get_traffic(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    return web.json_response(request.app[TRAFFIC].traffic_document(request.match_info["model"]))


async def put_traffic(request: web.Request) -> web.Response:
    principal = authorize(request, Role.OPERATOR)
    traffic = request.app[TRAFFIC]
    model_name = request.match_info["model"]
    traffic.live_stages(model_name)
    change = TrafficRequest.from_document(await read_json(request))
    await traffic.set_traffic(model_name, change, actor=principal.name)
    return web.json_response(traffic.traffic_document(model_name))


async def list_endpoints(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    return web.json_response({"endpoints": request.app[TRAFFIC].endpoint_documents()})


async def announce_endpoint(request: web.Request) -> web.Response:
    principal = authorize(request, Role.OPERATOR)
    announcement = EndpointAnnouncement.from_document(await read_json(request))
    is_new = await request.app[TRAFFIC].announce(announcement, actor=principal.name)
    return web.json_response(
        {
            "model_name": announcement.model_name, "version": announcement.version,
            "address": announcement.address, "port": announcement.port,
            "ttl_seconds": announcement.ttl_seconds, "new": is_new,
        },
        status=201 if is_new else 200,
    )


async def withdraw_endpoint(request: web.Request) -> web.Response:
    authorize(request, Role.OPERATOR)
    announcement = EndpointAnnouncement.from_document(await read_json(request), need_ttl=False)
    await request.app[TRAFFIC].withdraw(announcement)
    return web.json_response({"removed": True})
