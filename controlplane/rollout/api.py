"""HTTP handlers for rollouts (`/v1/rollouts…`) and policies (`/v1/policies`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controlplane.rollout.machine import Command
from controlplane.rollout.policy_files import PolicyRegistry
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.store import DecisionRow, RolloutRow, state_from_json
from registry.auth import Role
from registry.domain import check_model_name
from registry.errors import InvalidInput, NotFound
from registry.http import authorize, read_json

RUNNER = web.AppKey("rollout_runner", RolloutRunner)
# None when AEGIS_POLICIES is not set: no rollout starts by itself.
POLICIES: web.AppKey[PolicyRegistry | None] = web.AppKey("policy_registry")

COMMANDS = {
    "pause": Command.PAUSE,
    "resume": Command.RESUME,
    "promote": Command.PROMOTE,
    "abort": Command.ABORT,
}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/rollouts", list_rollouts)
    app.router.add_post("/v1/rollouts", start_rollout)
    app.router.add_get("/v1/rollouts/{model}", get_rollout)
    app.router.add_post("/v1/rollouts/{model}/{command}", command_rollout)


def rollout_document(
    row: RolloutRow, decisions: list[DecisionRow] | None, runner: RolloutRunner
) -> dict[str, Any]:
    state = state_from_json(row.state)
    policy = runner.policy(state.policy_name)
    document: dict[str, Any] = {
        "model_name": state.model_name,
        "policy": state.policy_name,
        "phase": state.phase.value,
        "stable_version": state.stable_version,
        "canary_version": state.canary_version,
        "step": state.step_index + 1,
        "steps": len(policy.steps) if policy else None,
        "canary_weight": state.canary_weight,
        "acknowledged": state.weight_acked_at is not None,
        "acknowledged_at": state.weight_acked_at,
        "failures": state.failures,
        "inconclusive_streak": state.inconclusive_streak,
        "error_streak": state.error_streak,
        "message": state.message,
        "started_at": row.started_at.isoformat(),
        "started_by": row.started_by,
    }
    if decisions is not None:
        document["decisions"] = [
            {
                "at": d.at.isoformat(),
                "phase": d.phase,
                "step": d.step_index + 1,
                "canary_weight": d.canary_weight,
                "reason": d.reason,
                **d.inputs,
            }
            for d in decisions
        ]
    return document


async def list_rollouts(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    runner = request.app[RUNNER]
    rows = await runner.store.latest_per_model()
    return web.json_response({"rollouts": [rollout_document(row, None, runner) for row in rows]})


async def get_rollout(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    runner = request.app[RUNNER]
    model_name = check_model_name(request.match_info["model"])
    found = await runner.store.latest(model_name)
    if found is None:
        raise NotFound(f"{model_name} has no rollout; GET /v1/rollouts lists them")
    row, decisions = found
    return web.json_response(rollout_document(row, decisions, runner))


async def start_rollout(request: web.Request) -> web.Response:
    principal = authorize(request, Role.OPERATOR)
    body = await read_json(request)
    runner = request.app[RUNNER]
    model_name = check_model_name(body.get("model_name"))
    policy_name = body.get("policy")
    policy = runner.policy(policy_name) if isinstance(policy_name, str) else None
    if policy is None:
        known = ", ".join(p.name for p in runner.policy_source.policies) or "none loaded"
        raise InvalidInput(f"policy {policy_name!r} is not loaded; known policies: {known}")
    await runner.start(model_name, policy, started_by=principal.name)
    return await get_rollout_after(request, model_name, status=201)


async def command_rollout(request: web.Request) -> web.Response:
    principal = authorize(request, Role.OPERATOR)
    model_name = check_model_name(request.match_info["model"])
    name = request.match_info["command"]
    command = COMMANDS.get(name)
    if command is None:
        raise NotFound(f"unknown rollout command {name!r}: use pause, resume, promote or abort")
    body = await read_json(request, required=False)
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise InvalidInput('"full" must be true or false')
    if command is Command.PROMOTE and full:
        command = Command.PROMOTE_FULL
    reason = body.get("reason") or f"{name}{' (full)' if full else ''} by {principal.name}"
    if not isinstance(reason, str):
        raise InvalidInput('"reason" must be a string')
    await request.app[RUNNER].command(model_name, command, reason=reason)
    return await get_rollout_after(request, model_name)


async def get_rollout_after(request: web.Request, model_name: str, *, status: int = 200) -> web.Response:
    runner = request.app[RUNNER]
    found = await runner.store.latest(model_name)
    assert found is not None
    return web.json_response(rollout_document(found[0], found[1], runner), status=status)
