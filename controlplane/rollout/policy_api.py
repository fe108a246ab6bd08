"""`GET /v1/policies`: the policies in force and the errors of the files as they are now."""

from __future__ import annotations

from controlplane.rollout.api import POLICIES
from controlplane.rollout.policy_schemas import PolicyStatus
from registry.auth import Role
from registry.routes import Call, Operation, Reply


async def list_policies(call: Call[None, None]) -> PolicyStatus:
    return PolicyStatus.of(call.app[POLICIES])


OPERATIONS = (
    Operation(
        "get", "/v1/policies", "listPolicies", "The policies in force and the current file errors",
        "rollouts", Role.VIEWER, list_policies, responses={200: Reply("the policies", PolicyStatus)},
    ),
)
