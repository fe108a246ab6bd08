"""HTTP handlers for rollouts (`/v1/rollouts…`)."""

from __future__ import annotations

from aiohttp import web

from controlplane.rollout.machine import Command
from controlplane.rollout.policy_files import PolicyRegistry
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.schemas import (
    RolloutCommandRequest,
    RolloutDocument,
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
COMMAND_PARAM = PathParam(
    "command", str, enum=tuple(COMMANDS),
    description="pause, resume, promote (past the current step; `full` to prod) or abort",
)


async def list_rollouts(call: Call[None, None]) -> RolloutList:
    runner = call.app[RUNNER]
    rows = await runner.store.latest_per_model()
    return RolloutList(rollouts=[RolloutSummary.of(row, runner) for row in rows])


async def get_rollout(call: Call[None, None]) -> RolloutDocument:
    return await _document(call.app[RUNNER], call.path["model"])


async def _document(runner: RolloutRunner, model_name: str) -> RolloutDocument:
    found = await runner.store.latest(model_name)
    if found is None:
        raise NotFound(f"{model_name} has no rollout; GET /v1/rollouts lists them")
    row, decisions = found
    return RolloutDocument.with_decisions(row, decisions, runner)


async def start_rollout(call: Call[RolloutStartRequest, None]) -> Answer:
    runner = call.app[RUNNER]
    policy = runner.policy(call.body.policy)
    if policy is None:
        known = ", ".join(p.name for p in runner.policy_source.policies) or "none loaded"
        raise InvalidInput(f"policy {call.body.policy!r} is not loaded; known policies: {known}")
    await runner.start(call.body.model_name, policy, started_by=call.actor)
    return Answer(201, await _document(runner, call.body.model_name))


async def command_rollout(call: Call[RolloutCommandRequest, None]) -> RolloutDocument:
    model_name, name = call.path["model"], call.path["command"]
    command = COMMANDS[name]
    full = call.body.full
    if command is Command.PROMOTE and full:
        command = Command.PROMOTE_FULL
    reason = call.body.reason or f"{name}{' (full)' if full else ''} by {call.actor}"
    await call.app[RUNNER].command(model_name, command, reason=reason)
    return await _document(call.app[RUNNER], model_name)


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
        get_rollout, params=(MODEL_PARAM,), responses={200: Reply("the rollout", RolloutDocument)},
        errors={404: "the model has no rollout", 422: "the model name is not valid"},
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
