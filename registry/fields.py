"""Field types shared by every API model: names, versions, checksums and timestamps (pure).

Each type validates with the domain's own check, so an HTTP field and the domain
refuse the same values with the same message, and describes itself in JSON
Schema from the same pattern constants.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

from registry.domain import (
    CHECKSUM_PATTERN,
    MODEL_NAME_PATTERN,
    RESERVED_MODEL_NAMES,
    VERSION_PATTERN,
    check_checksum,
    check_model_name,
    check_version,
)
from registry.errors import RegistryError


def _as_value_error(check: Any) -> Any:
    """Run a domain check inside pydantic: its message becomes the field's error message."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except RegistryError as exc:
            raise ValueError(exc.message) from None

    return validate


ModelName = Annotated[
    str,
    AfterValidator(_as_value_error(check_model_name)),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": MODEL_NAME_PATTERN.pattern,
            "not": {"anyOf": [{"enum": sorted(RESERVED_MODEL_NAMES)}, {"pattern": r"\.\."}]},
            "description": "lowercase; no `|`, `/` or `..`; `models` and `register` are reserved",
        }
    ),
]
Version = Annotated[
    str,
    AfterValidator(_as_value_error(check_version)),
    WithJsonSchema(
        {"type": "string", "pattern": VERSION_PATTERN.pattern, "not": {"pattern": r"\.\."},
         "description": "no `|`, `/` or `..`"}
    ),
]
Checksum = Annotated[
    str,
    AfterValidator(_as_value_error(check_checksum)),
    WithJsonSchema(
        {"type": "string", "pattern": CHECKSUM_PATTERN.pattern,
         "description": "lowercase hex SHA-256 of the artifact's bytes"}
    ),
]


def as_aware(value: Any) -> Any:
    """A naive datetime is UTC (SQLite keeps no offset); a number is Unix time."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# Every timestamp in every answer: RFC 3339 with an offset, whatever the store handed back.
Timestamp = Annotated[
    datetime,
    BeforeValidator(as_aware),
    PlainSerializer(lambda at: at.isoformat(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339, with an offset"}),
]
