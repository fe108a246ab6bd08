"""HTTP handlers for rollouts (`/v1/rollouts…`) and policies (`/v1/policies`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from controlplane.rollout.machine import Command, RolloutState
from controlplane.rollout.policy_files import PolicyRegistry
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.store import DecisionRow, RolloutRow, state_from_json
from registry.auth import Role
from registry.domain import check_bounded_int, check_model_name
from registry.errors import InvalidInput, NotFound
from registry.http import authorize, read_json
from registry.store import as_utc

RUNNER = web.AppKey("rollout_runner", RolloutRunner)
# None when AEGIS_POLICIES is not set: no rollout starts by itself.
POLICIES: web.AppKey[PolicyRegistry | None] = web.AppKey("policy_registry")

COMMANDS = {
    "pause": Command.PAUSE,
    "resume": Command.RESUME,
    "promote": Command.PROMOTE,
    "abort": Command.ABORT,
}
# Decisions in a rollout document unless asked for more; a page holds at most MAX_PAGE.
DEFAULT_DECISIONS = 20
MAX_PAGE = 500
MAX_ID = 2**31 - 1  # ids are 32-bit integers in both databases


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/rollouts", list_rollouts)
    app.router.add_post("/v1/rollouts", start_rollout)
    app.router.add_get("/v1/rollouts/{model}", get_rollout)
    app.router.add_get("/v1/rollouts/{model}/history", rollout_history)
    app.router.add_get("/v1/rollouts/{model}/history/{rollout_id}", past_rollout)
    app.router.add_post("/v1/rollouts/{model}/{command}", command_rollout)
    app.router.add_get("/v1/policies", list_policies)


def rollout_document(
    row: RolloutRow, decisions: list[DecisionRow] | None, runner: RolloutRunner
) -> dict[str, Any]:
    state = state_from_json(row.state)
    policy = runner.policy(state.policy_name)
    steps = len(policy.steps) if policy else None
    finished = not state.active
    document: dict[str, Any] = {
        "id": row.id,
        "model_name": state.model_name,
        "policy": state.policy_name,
        "phase": state.phase.value,
        "finished": finished,
        "stable_version": state.stable_version,
        "canary_version": state.canary_version,
        # A finished rollout went past its last step; it shows where it ended, not "7 of 6".
        "step": min(state.step_index + 1, steps) if steps else state.step_index + 1,
        "steps": steps,
        "canary_weight": state.canary_weight,
        "acknowledged": state.weight_acked_at is not None,
        "acknowledged_at": state.weight_acked_at,
        "failures": state.failures,
        "inconclusive_streak": state.inconclusive_streak,
        "error_streak": state.error_streak,
        "message": state.message,
        "started_at": as_utc(row.started_at).isoformat(),
        "started_by": row.started_by,
    }
    if decisions is not None:
        document["decisions"] = [decision_document(d) for d in decisions]
    return document


def decision_document(decision: DecisionRow) -> dict[str, Any]:
    return {
        "id": decision.id,
        "at": as_utc(decision.at).isoformat(),
        "phase": decision.phase,
        "step": decision.step_index + 1,
        "canary_weight": decision.canary_weight,
        "reason": decision.reason,
        **decision.inputs,
    }


def served_weights(runner: RolloutRunner, state: RolloutState) -> dict[str, Any]:
    """The canary share live Envoy nodes serve, from the route version each acknowledged.

    `actual_canary_weight` is the share when every live node serves the same one; null when
    no node polled, nodes differ, or a node runs routes this process did not publish.
    `served_canary_weights` counts the nodes per share (a fleet is summed, not listed).
    """
    splits = runner.traffic.served_splits(state.model_name)
    shares = Counter(None if split is None else split.get(state.canary_version, 0) for split in splits)
    return {
        "actual_canary_weight": next(iter(shares)) if len(shares) == 1 else None,
        "served_canary_weights": [
            {"canary_weight": share, "nodes": nodes}
            for share, nodes in sorted(shares.items(), key=lambda item: -1 if item[0] is None else item[0])
        ],
    }


def _page_limit(request: web.Request, default: int) -> tuple[int, int | None]:
    limit = _query_int(request, "limit", low=1, high=MAX_PAGE)
    before = _query_int(request, "before", low=1, high=MAX_ID)
    return (limit if limit is not None else default), before


def _query_int(request: web.Request, name: str, *, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    return _bounded(raw, f"query parameter {name!r}", low=low, high=high)


def _bounded(raw: str, label: str, *, low: int, high: int) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise InvalidInput(f"{label} must be an integer from {low} to {high}")
    return check_bounded_int(int(raw), label=label, low=low, high=high)


async def list_rollouts(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    runner = request.app[RUNNER]
    rows = await runner.store.latest_per_model()
    return web.json_response({"rollouts": [rollout_document(row, None, runner) for row in rows]})


async def get_rollout(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    runner = request.app[RUNNER]
    model_name = check_model_name(request.match_info["model"])
    limit, _ = _page_limit(request, DEFAULT_DECISIONS)
    found = await runner.store.latest(model_name, decisions=limit)
    if found is None:
        raise NotFound(f"{model_name} has no rollout; GET /v1/rollouts lists them")
    return web.json_response(latest_document(runner, *found))


def latest_document(runner: RolloutRunner, row: RolloutRow, decisions: list[DecisionRow]) -> dict[str, Any]:
    """The newest rollout of a model, with what Envoy serves now beside what it set."""
    document = rollout_document(row, decisions, runner)
    document.update(served_weights(runner, state_from_json(row.state)))
    return document


async def rollout_history(request: web.Request) -> web.Response:
    """Every rollout of a model, newest first, paged by rollout id."""
    authorize(request, Role.VIEWER)
    runner = request.app[RUNNER]
    model_name = check_model_name(request.match_info["model"])
    limit, before = _page_limit(request, 50)
    history = await runner.store.history(model_name, limit=limit, before=before)
    rollouts = []
    for row, count, last_at in history:
        document = rollout_document(row, None, runner)
        document["decision_count"] = count
        document["last_decision_at"] = last_at.isoformat() if last_at is not None else None
        rollouts.append(document)
    # A full page may have more behind it: pass `before=next_before` for the next one.
    next_before = history[-1][0].id if len(history) == limit else None
    return web.json_response({"model_name": model_name, "rollouts": rollouts, "next_before": next_before})


async def past_rollout(request: web.Request) -> web.Response:
    """One rollout of a model, current or past, with a page of its decisions."""
    authorize(request, Role.VIEWER)
    runner = request.app[RUNNER]
    model_name = check_model_name(request.match_info["model"])
    rollout_id = _bounded(
        request.match_info["rollout_id"], f"the rollout id (from `aegis rollout history {model_name}`)",
        low=1, high=MAX_ID,
    )
    row = await runner.store.one(model_name, rollout_id)
    if row is None or row.id is None:
        raise NotFound(
            f"{model_name} has no rollout {rollout_id}; GET /v1/rollouts/{model_name}/history lists them"
        )
    limit, before = _page_limit(request, 100)
    decisions = await runner.store.decisions(row.id, limit=limit, before=before)
    document = rollout_document(row, decisions, runner)
    document["next_before"] = decisions[-1].id if len(decisions) == limit else None
    return web.json_response(document)


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
    await request.app[RUNNER].command(model_name, command, reason=reason, actor=principal.name)
    return await get_rollout_after(request, model_name)


async def get_rollout_after(request: web.Request, model_name: str, *, status: int = 200) -> web.Response:
    runner = request.app[RUNNER]
    found = await runner.store.latest(model_name)
    assert found is not None
    return web.json_response(latest_document(runner, *found), status=status)


async def list_policies(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    policies = request.app[POLICIES]
    if policies is None:
        return web.json_response({"path": None, "ok": True, "policies": [], "files": [], "errors": []})
    return web.json_response(policies.status_document())
