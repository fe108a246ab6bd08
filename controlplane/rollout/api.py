"""HTTP handlers for rollouts (`/v1/rollouts…`): the latest, the history, start and commands."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from controlplane.rollout.machine import Command
from controlplane.rollout.policy_files import PolicyRegistry
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.schemas import (
    MAX_ID,
    DecisionDocument,
    LatestQuery,
    PageQuery,
    PastRollout,
    RolloutCommandRequest,
    RolloutDocument,
    RolloutHistory,
    RolloutHistoryEntry,
    RolloutList,
    RolloutStartRequest,
    RolloutSummary,
)
from registry.auth import Role
from registry.errors import InvalidInput, NotFound
from registry.routes import Answer, Call, Operation, PathParam, Reply
from registry.schemas import MODEL, MODEL_PARAM

RUNNER = web.AppKey("rollout_runner", RolloutRunner)
# None when AEGIS_POLICIES is not set: no rollout starts by itself.
POLICIES: web.AppKey[PolicyRegistry | None] = web.AppKey("policy_registry")

COMMANDS = {
    "pause": Command.PAUSE,
    "resume": Command.RESUME,
    "promote": Command.PROMOTE,
    "abort": Command.ABORT,
}
# Decisions in a rollout document, rollouts in a history page, decisions in a past rollout,
# unless `limit` asks for another number.
DEFAULT_DECISIONS = 20
DEFAULT_HISTORY = 50
DEFAULT_PAST_DECISIONS = 100
COMMAND_PARAM = PathParam(
    "command", str, enum=tuple(COMMANDS),
    description="pause, resume, promote (past the current step; `full` to prod) or abort",
)
ROLLOUT_ID_PARAM = PathParam(
    "rollout_id", Annotated[int, Field(ge=1, le=MAX_ID)], example=1,
    description="a rollout's `id`, from the history",
)


async def list_rollouts(call: Call[None, None]) -> RolloutList:
    runner = call.app[RUNNER]
    rows = await runner.store.latest_per_model()
    return RolloutList(rollouts=[RolloutSummary.of(row, runner) for row in rows])


async def get_rollout(call: Call[None, LatestQuery]) -> RolloutDocument:
    limit = call.query.limit or DEFAULT_DECISIONS
    return await _latest(call.app[RUNNER], call.path["model"], decisions=limit)


async def _latest(
    runner: RolloutRunner, model_name: str, *, decisions: int = DEFAULT_DECISIONS
) -> RolloutDocument:
    found = await runner.store.latest(model_name, decisions=decisions)
    if found is None:
        # The CLI turns this API phrasing into its own commands (controlplane/client.py).
        raise NotFound(f"{model_name} has no rollout; GET /v1/rollouts lists them")
    return RolloutDocument.latest(*found, runner)


async def rollout_history(call: Call[None, PageQuery]) -> RolloutHistory:
    """Every rollout of a model, newest first, paged by rollout id."""
    runner, model_name = call.app[RUNNER], call.path["model"]
    limit = call.query.limit or DEFAULT_HISTORY
    history = await runner.store.history(model_name, limit=limit, before=call.query.before)
    rollouts = [
        RolloutHistoryEntry.model_validate(
            {**RolloutSummary.fields_of(row, runner), "decision_count": count, "last_decision_at": last_at}
        )
        for row, count, last_at in history
    ]
    # A full page may have more behind it: pass `before=next_before` for the next one.
    next_before = history[-1][0].id if len(history) == limit else None
    return RolloutHistory(model_name=model_name, rollouts=rollouts, next_before=next_before)


async def past_rollout(call: Call[None, PageQuery]) -> PastRollout:
    """One rollout of a model, current or past, with a page of its decisions."""
    runner, model_name, rollout_id = call.app[RUNNER], call.path["model"], call.path["rollout_id"]
    row = await runner.store.one(model_name, rollout_id)
    if row is None or row.id is None:
        raise NotFound(
            f"{model_name} has no rollout {rollout_id}; GET /v1/rollouts/{model_name}/history lists them"
        )
    limit = call.query.limit or DEFAULT_PAST_DECISIONS
    decisions = await runner.store.decisions(row.id, limit=limit, before=call.query.before)
    return PastRollout.model_validate(
        {
            **RolloutSummary.fields_of(row, runner),
            "decisions": [DecisionDocument.of(d) for d in decisions],
            "next_before": decisions[-1].id if len(decisions) == limit else None,
        }
    )


async def start_rollout(call: Call[RolloutStartRequest, None]) -> Answer:
    runner = call.app[RUNNER]
    policy = runner.policy(call.body.policy)
    if policy is None:
        known = ", ".join(p.name for p in runner.policy_source.policies) or "none loaded"
        raise InvalidInput(f"policy {call.body.policy!r} is not loaded; known policies: {known}")
    await runner.start(call.body.model_name, policy, started_by=call.actor)
    return Answer(201, await _latest(runner, call.body.model_name))


async def command_rollout(call: Call[RolloutCommandRequest, None]) -> RolloutDocument:
    model_name = call.path["model"]
    await run_command(
        call.app[RUNNER], model_name, call.path["command"],
        full=call.body.full, reason=call.body.reason, actor=call.actor,
    )
    return await _latest(call.app[RUNNER], model_name)


async def run_command(
    runner: RolloutRunner, model_name: str, name: str, *, full: bool, reason: str, actor: str
) -> None:
    """An operator's command, from the API or the console alike."""
    command = COMMANDS[name]
    if command is Command.PROMOTE and full:
        command = Command.PROMOTE_FULL
    reason = reason or f"{name}{' (full)' if full else ''} by {actor}"
    await runner.command(model_name, command, reason=reason, actor=actor)


OPERATIONS = (
    Operation(
        "get", "/v1/rollouts", "listRollouts", "Each model's latest rollout", "rollouts", Role.VIEWER,
        list_rollouts, responses={200: Reply("the rollouts, without decisions", RolloutList)},
    ),
    Operation(
        "post", "/v1/rollouts", "startRollout", "Start a rollout by hand with a loaded policy",
        "rollouts", Role.OPERATOR, start_rollout, body=RolloutStartRequest,
        examples={
            "default-policy": (
                "roll out the canary with policy default", {"model_name": MODEL, "policy": "default"}
            )
        },
        responses={201: Reply("started", RolloutDocument)},
        errors={
            404: "the model is not registered",
            409: "no prod or no canary version, or a rollout is already active",
            422: "a bad model name, or a policy that is not loaded",
        },
    ),
    Operation(
        "get", "/v1/rollouts/{model}", "getRollout",
        "A model's latest rollout with its decisions and their reasons", "rollouts", Role.VIEWER,
        get_rollout, params=(MODEL_PARAM,), query=LatestQuery,
        responses={200: Reply("the rollout", RolloutDocument)},
        errors={404: "the model has no rollout", 422: "the model name or the limit is not valid"},
    ),
    Operation(
        "get", "/v1/rollouts/{model}/history", "rolloutHistory", "Every rollout of a model, newest first",
        "rollouts", Role.VIEWER, rollout_history, params=(MODEL_PARAM,), query=PageQuery,
        responses={200: Reply("a page of the model's rollouts", RolloutHistory)},
        errors={422: "a bad model name, limit or before"},
    ),
    Operation(
        "get", "/v1/rollouts/{model}/history/{rollout_id}", "getPastRollout",
        "One rollout of a model, current or past, with a page of its decisions", "rollouts", Role.VIEWER,
        past_rollout, params=(MODEL_PARAM, ROLLOUT_ID_PARAM), query=PageQuery,
        responses={200: Reply("the rollout", PastRollout)},
        errors={
            404: "the model has no rollout with this id",
            422: "a bad model name, rollout id, limit or before",
        },
    ),
    Operation(
        "post", "/v1/rollouts/{model}/{command}", "commandRollout",
        "Pause, resume, promote or abort an active rollout at once", "rollouts", Role.OPERATOR,
        command_rollout, params=(MODEL_PARAM, COMMAND_PARAM), body=RolloutCommandRequest,
        body_required=False,
        examples={
            "with-reason": (
                "any command, with a reason for the record", {"reason": "waiting for the nightly batch"}
            ),
            "promote-full": ("with promote: straight to prod", {"full": True}),
        },
        responses={200: Reply("the rollout after the command", RolloutDocument)},
        errors={
            404: "an unknown command, or the model has no active rollout",
            422: "a bad model name, `full` not a boolean or `reason` not a string",
        },
    ),
)
