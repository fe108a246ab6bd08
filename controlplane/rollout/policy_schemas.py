"""Response models of `GET /v1/policies`: the policies in force, their files and errors."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from controlplane.rollout.policy import PolicyError
from controlplane.rollout.policy_files import PolicyRegistry
from controlplane.rollout.policy_loader import policy_document
from registry.boundary import ResponseModel


class PolicyDocument(ResponseModel):
    """A policy in the vocabulary of the YAML it came from (`policy_document`), plus its source."""

    name: str
    source: str = Field(description="file:line")
    models: list[str]
    steps: list[dict[str, Any]] = Field(description='`{"setWeight": N}` or `{"pause": {"duration"?}}`')
    analysis: dict[str, Any] = Field(description="the `analysis` block, as in the YAML")
    match: list[dict[str, Any]]
    mirror: dict[str, int]
    alerts: dict[str, bool]


class PolicyErrorDocument(ResponseModel):
    file: str
    line: int
    field: str
    message: str
    text: str

    @classmethod
    def of(cls, error: PolicyError) -> PolicyErrorDocument:
        return cls(
            file=error.file, line=error.line, field=error.field, message=error.message, text=str(error)
        )


class PolicyFileDocument(ResponseModel):
    file: str
    policies: list[str]
    stale: bool = Field(description="an earlier version kept in force")
    errors: int


class PolicyStatus(ResponseModel):
    path: str | None = Field(description="AEGIS_POLICIES; null when unset")
    ok: bool
    policies: list[PolicyDocument]
    files: list[PolicyFileDocument]
    errors: list[PolicyErrorDocument]

    @classmethod
    def of(cls, registry: PolicyRegistry | None) -> PolicyStatus:
        if registry is None:
            return cls(path=None, ok=True, policies=[], files=[], errors=[])
        current = registry.current
        return cls(
            path=str(registry.path),
            ok=current.ok,
            policies=[PolicyDocument.model_validate(policy_document(p)) for p in current.policies],
            files=[
                PolicyFileDocument(
                    file=str(file.path), policies=[p.name for p in file.policies], stale=file.stale,
                    errors=len(file.errors),
                )
                for file in current.files
            ],
            errors=[PolicyErrorDocument.of(error) for error in current.errors],
        )
