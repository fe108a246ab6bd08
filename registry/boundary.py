"""The base classes of every API model, and the one error answer (pure: pydantic only).

Each class decides its `extra` policy once, for every model built on it.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from registry.strict_json import MAX_DEPTH

JSON = "application/json"


class RequestModel(BaseModel):
    """A body Aegis's own clients send: strict types, and an unknown field is refused.

    `extra="forbid"` because a misspelt optional field ("reson") silently ignored
    would do something other than the caller asked. Formats other programs send
    (Envoy, Alertmanager) subclass `ForeignRequest` instead.
    """

    model_config = ConfigDict(strict=True, extra="forbid")


class ForeignRequest(BaseModel):
    """A body another program sends (Envoy, Alertmanager): strict on the fields Aegis reads,
    unknown fields ignored, since those programs add fields between releases."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    # How deep the body may nest (`registry.strict_json`). A model whose fields are all
    # shallow, and that drops everything else, sets None: nothing recurses over the rest.
    json_max_depth: ClassVar[int | None] = MAX_DEPTH


class QueryModel(BaseModel):
    """A URL query: values arrive as strings, so numbers are converted (lax), and parameters
    Aegis does not read (a cache buster, a proxy's) are ignored."""

    model_config = ConfigDict(extra="ignore")


class ResponseModel(BaseModel):
    """An answer: built by a handler from trusted values, serialised by the model."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(ResponseModel):
    code: str = Field(examples=["not_found", "invalid_input"])
    message: str = Field(description="what went wrong and what to fix")


class Error(ResponseModel):
    """Every error Aegis answers: `{"error": {"code", "message"}}`; the message says what to fix."""

    error: ErrorDetail
