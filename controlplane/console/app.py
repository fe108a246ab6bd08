"""The console's aiohttp application, mounted at /ui/ by `controlplane.app`: routes and thin handlers.

Each handler checks the session's role as the API would, gathers the API's documents
(`data`), turns them into what the page shows (`views`, pure) and renders a template
(Jinja, autoescaped). Actions call the same service functions as the API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp_jinja2
import jinja2
from aiohttp import web

from controlplane.console import charts, data, views
from controlplane.console.guard import (
    CONFIG,
    CSRF_FIELD,
    ConsoleConfig,
    SignInNeeded,
    check_sign_in_form,
    end_session,
    new_sign_in_token,
    require_form,
    require_role,
    session_of,
    start_session,
)
from controlplane.console.live import CLOSING, LivePart, stream
from controlplane.console.prometheus_range import PrometheusRange
from controlplane.console.sessions import Session, SessionStore
from controlplane.rollout import api as rollout_api
from controlplane.traffic import api as traffic_api
from registry.auth import Role
from registry.errors import RegistryError
from registry.http import TOKENS
from registry.schemas import MODEL_PARAM

HERE = Path(__file__).parent
ResponseT = TypeVar("ResponseT", bound=web.StreamResponse)
PROMETHEUS = web.AppKey("console_prometheus", PrometheusRange)
# Nothing on a console page is loaded from elsewhere or inline: an injected <script> would not
# run even if escaping ever failed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CHART_REFRESH_SECONDS = 3.0
# Parts whose data lives in the database (names, stages, history) are read again this often.
DATABASE_REFRESH_SECONDS = 5.0


def create_console(*, prometheus_url: str, public_url: str) -> web.Application:
    console = web.Application(middlewares=[_html_errors])
    console[CONFIG] = ConsoleConfig(
        sessions=SessionStore(clock=time.time), public_url_is_https=public_url.startswith("https://")
    )
    console[CLOSING] = asyncio.Event()
    console[PROMETHEUS] = PrometheusRange(prometheus_url)
    aiohttp_jinja2.setup(
        console,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        context_processors=[_page_context],
    )
    console.on_shutdown.append(_close_streams)
    console.cleanup_ctx.append(_prometheus_client)
    router = console.router
    router.add_get("/", models_page, name="models")
    router.add_get("/sign-in", sign_in_form, name="sign_in")
    router.add_post("/sign-in", sign_in)
    router.add_post("/sign-out", sign_out, name="sign_out")
    router.add_get("/models/{model}", model_page, name="model")
    router.add_get("/models/{model}/rollout", rollout_page, name="rollout")
    router.add_get("/models/{model}/rollouts/{rollout_id:[0-9]{1,9}}", past_rollout_page, name="past_rollout")
    router.add_post("/models/{model}/rollout/{action}", rollout_action, name="rollout_action")
    router.add_get("/alerts", alerts_page, name="alerts")
    router.add_get("/xds", xds_page, name="xds")
    router.add_get("/cluster", cluster_page, name="cluster")
    router.add_get("/live/models", models_live, name="models_live")
    router.add_get("/live/models/{model}/rollout", rollout_live, name="rollout_live")
    router.add_static("/static/", HERE / "static", name="static")
    return console


# --- plumbing --------------------------------------------------------------------------------------


@web.middleware
async def _html_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Console errors are pages, not the API's JSON; every answer gets the security headers."""
    try:
        response = await handler(request)
    except SignInNeeded as exc:
        if request.method != "GET":
            return _secured(request, _error_page(request, exc.status, exc.message))
        raise _secured(request, web.HTTPSeeOther(request.app.router["sign_in"].url_for())) from None
    except RegistryError as exc:
        response = _error_page(request, exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise _secured(request, exc) from None  # redirects after a form
        response = _error_page(request, exc.status, exc.reason)
    return _secured(request, response)


def _secured(request: web.Request, response: ResponseT) -> ResponseT:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    resource = request.match_info.route.resource
    if resource is None or resource.name != "static":  # pages hold session data: never cached
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return aiohttp_jinja2.render_template(
        "error.html", request, {"status": status, "message": message}, status=status
    )


async def _page_context(request: web.Request) -> dict[str, Any]:
    session = session_of(request)
    return {
        "session": session,
        "csrf_field": CSRF_FIELD,
        "url": lambda name, **parts: str(request.app.router[name].url_for(**parts)),
        "static": lambda name: str(request.app.router["static"].url_for(filename=name)),
    }


async def _close_streams(console: web.Application) -> None:
    console[CLOSING].set()


async def _prometheus_client(console: web.Application) -> AsyncIterator[None]:
    yield
    await console[PROMETHEUS].close()


def _model(request: web.Request) -> str:
    name: str = MODEL_PARAM.parse(request.match_info["model"])
    return name


def _can_act(session: Session) -> bool:
    return session.principal.role >= Role.OPERATOR


# --- signing in and out ----------------------------------------------------------------------------


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    if session_of(request) is not None:
        raise web.HTTPSeeOther(request.app.router["models"].url_for())
    return _sign_in_page(request, status=200, message="")


def _sign_in_page(request: web.Request, *, status: int, message: str) -> web.Response:
    response = web.Response(status=status, content_type="text/html")
    token = new_sign_in_token(request, response)
    response.text = aiohttp_jinja2.render_string(
        "sign_in.html", request, {"sign_in_token": token, "message": message}
    )
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
    check_sign_in_form(request, form)
    token = form.get("token", "").strip()
    try:
        principal = request.config_dict[TOKENS].authenticate(f"Bearer {token}")
    except RegistryError:
        return _sign_in_page(request, status=401, message="That token is not valid. Check it and try again.")
    end_session(request, web.Response())  # a session from before does not outlive a new sign-in
    session_id, _session = request.app[CONFIG].sessions.create(principal)
    response = web.HTTPSeeOther(request.app.router["models"].url_for())
    start_session(request, response, session_id)
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await require_form(request, Role.VIEWER)
    response = web.HTTPSeeOther(request.app.router["sign_in"].url_for())
    end_session(request, response)
    raise response


# --- pages -----------------------------------------------------------------------------------------


async def models_page(request: web.Request) -> web.StreamResponse:
    require_role(request, Role.VIEWER)
    models = await data.models(request.config_dict)
    return aiohttp_jinja2.render_template(
        "models.html", request, {"models_html": await _models_fragment(request, models)}
    )


async def _models_fragment(request: web.Request, models: list[dict[str, Any]]) -> str:
    config = request.config_dict
    names = [m["model_name"] for m in models]
    traffic = {name: found for name in names if (found := data.traffic(config, name)) is not None}
    rollouts = await data.rollout_summaries(config)
    rows = views.model_rows(models, traffic, rollouts)
    return aiohttp_jinja2.render_string("_models.html", request, {"rows": rows})


async def models_live(request: web.Request) -> web.StreamResponse:
    require_role(request, Role.VIEWER)
    config = request.config_dict
    shown: list[str] = []

    async def render() -> str:
        models = await data.models(config)
        shown[:] = [m["model_name"] for m in models]
        return await _models_fragment(request, models)

    def signature() -> Hashable:
        # In memory only: each shown model's traffic document and the active rollouts' states.
        runner = config[rollout_api.RUNNER]
        return (
            repr([data.traffic(config, name) for name in shown]),
            repr(sorted((name, active.state) for name, active in runner.active.items())),
        )

    return await stream(request, [LivePart("models-live", render, signature, DATABASE_REFRESH_SECONDS)])


async def model_page(request: web.Request) -> web.StreamResponse:
    require_role(request, Role.VIEWER)
    model_name = _model(request)
    model, signatures = await data.model(request.config_dict, model_name)
    history = await data.rollout_history(request.config_dict, model_name)
    page = views.model_page(model, signatures, history)
    return aiohttp_jinja2.render_template("model.html", request, {"page": page})


async def rollout_page(request: web.Request) -> web.StreamResponse:
    session = require_role(request, Role.VIEWER)
    model_name = _model(request)
    rollout = await data.latest_rollout(request.config_dict, model_name)
    page = views.rollout_page(rollout, can_act=_can_act(session))
    return aiohttp_jinja2.render_template(
        "rollout.html", request,
        {"page": page, "live": True, "rollout_html": _rollout_fragment(request, page)},
    )


async def past_rollout_page(request: web.Request) -> web.StreamResponse:
    require_role(request, Role.VIEWER)
    model_name = _model(request)
    rollout = await data.past_rollout(request.config_dict, model_name, int(request.match_info["rollout_id"]))
    page = views.rollout_page(rollout, can_act=False)
    return aiohttp_jinja2.render_template(
        "rollout.html", request,
        {"page": page, "live": False, "rollout_html": _rollout_fragment(request, page),
         "charts_html": await _charts_fragment(request, rollout),},
    )


def _rollout_fragment(request: web.Request, page: views.RolloutPage) -> str:
    return aiohttp_jinja2.render_string("_rollout.html", request, {"page": page})


async def _charts_fragment(request: web.Request, rollout: dict[str, Any]) -> str:
    config = request.config_dict
    policy = config[rollout_api.RUNNER].policy(rollout["policy"])
    window = policy.analysis.window_seconds if policy is not None else charts.DEFAULT_WINDOW_SECONDS
    arms = (
        charts.Arm(f"stable {rollout['stable_version']}", "stable", rollout["stable_version"]),
        charts.Arm(f"canary {rollout['canary_version']}", "canary", rollout["canary_version"]),
    )
    decisions = rollout["decisions"]
    ended = None if rollout["phase"] in views.ACTIVE_PHASES or not decisions else _epoch(decisions[0]["at"])
    span = charts.time_range(_epoch(rollout["started_at"]), ended, time.time())
    queries = charts.chart_queries(rollout["model_name"], arms, window_seconds=window)
    prometheus = request.app[PROMETHEUS]
    answers = await asyncio.gather(*(prometheus.query(q.promql, span) for q in queries))
    drawn = []
    for template, _title, _unit in charts.CHARTS:
        mine = [(q, a) for q, a in zip(queries, answers, strict=True) if q.chart == template]
        error = next((a.error for _q, a in mine if a.error), "")
        drawn.append(charts.chart(template, [(q.arm, a.points) for q, a in mine], span, error=error))
    return aiohttp_jinja2.render_string("_charts.html", request, {"charts": drawn})


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


async def rollout_live(request: web.Request) -> web.StreamResponse:
    session = require_role(request, Role.VIEWER)
    model_name = _model(request)
    config = request.config_dict
    latest: dict[str, Any] = {}

    async def render_rollout() -> str:
        latest.update(await data.latest_rollout(config, model_name))
        return _rollout_fragment(request, views.rollout_page(latest, can_act=_can_act(session)))

    async def render_charts() -> str:
        if not latest:
            latest.update(await data.latest_rollout(config, model_name))
        return await _charts_fragment(request, latest)

    def signature() -> Hashable:
        active = config[rollout_api.RUNNER].active.get(model_name)
        traffic = config[traffic_api.TRAFFIC]
        return (
            repr(active.state) if active else None,
            repr(traffic.acknowledgement(model_name)),
            repr(traffic.served_splits(model_name)),
        )

    return await stream(
        request,
        [
            LivePart("rollout-live", render_rollout, signature, DATABASE_REFRESH_SECONDS),
            LivePart("charts-live", render_charts, lambda: None, CHART_REFRESH_SECONDS),
        ],
    )


async def rollout_action(request: web.Request) -> web.StreamResponse:
    session, form = await require_form(request, Role.OPERATOR)
    model_name = _model(request)
    action = request.match_info["action"]
    if action not in views.ROLLOUT_ACTIONS:
        raise web.HTTPNotFound(reason=f"unknown action {action[:32]!r}")
    command, full = views.ROLLOUT_ACTIONS[action]
    await rollout_api.run_command(
        request.config_dict[rollout_api.RUNNER], model_name, command,
        full=full, reason=form.get("reason", "")[:1024], actor=session.principal.name,
    )
    raise web.HTTPSeeOther(request.app.router["rollout"].url_for(model=model_name))


async def alerts_page(request: web.Request) -> web.StreamResponse:
    require_role(request, Role.VIEWER)
    alerts = views.alert_views(await data.received_alerts(request.config_dict))
    return aiohttp_jinja2.render_template("alerts.html", request, {"alerts": alerts})


async def xds_page(request: web.Request) -> web.StreamResponse:
    require_role(request, Role.VIEWER)
    document = data.xds_nodes(request.config_dict)
    return aiohttp_jinja2.render_template(
        "xds.html", request,
        {"nodes": views.node_views(document), "last_publish_error": document["last_publish_error"],
         "current": document["current_ads"]},
    )


async def cluster_page(request: web.Request) -> web.StreamResponse:
    require_role(request, Role.VIEWER)
    page = views.cluster_page(await data.cluster(request.config_dict))
    return aiohttp_jinja2.render_template("cluster.html", request, {"page": page})
