"""Strict JSON for untrusted input: one parser whose every refusal is a `MalformedRequest` (400).

A purely computational module. Python's `json.loads` lets three things through
that later turn into 500s or surprises: nesting deep enough to exhaust the
recursion limit (a `RecursionError`, not a `JSONDecodeError`), integers longer
than the interpreter's digit limit (a bare `ValueError`), and the non-standard
`NaN`/`Infinity`. This parser refuses them, and refuses nesting deeper than
`MAX_DEPTH` before any caller walks the document recursively.
"""

from __future__ import annotations

import json
import math
from typing import Any

from registry.errors import MalformedRequest

# Deeper than any document Aegis or Envoy sends (an Envoy node description is < 10
# levels); shallow enough that code recursing over the result never nears Python's limit.
MAX_DEPTH = 64
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Digits of INT64_MIN plus its sign: anything longer is out of range, without calling int().
_MAX_INT_TEXT = len(str(INT64_MIN))


class _Refused(ValueError):
    """Raised from inside the decoder's hooks; carries the message for the caller."""


def parse_json(raw: bytes | str, *, what: str, max_depth: int | None = MAX_DEPTH) -> Any:
    """The JSON value in `raw`, or a 400 that names `what` and says what is wrong with it.

    `max_depth=None` skips the depth walk, for a caller that keeps only shallow fields of
    the document and drops the rest (the walk costs as much as the parse on an 80 KB
    Envoy poll); nesting past the interpreter's recursion limit is still a 400.
    """
    try:
        document = json.loads(
            raw, parse_int=_int64, parse_float=_finite_float, parse_constant=_no_constant
        )
    except _Refused as exc:
        raise MalformedRequest(f"{what} is refused: {exc}") from None
    except RecursionError:
        raise MalformedRequest(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"{what} is not valid JSON: {exc}") from None
    if max_depth is not None and _may_be_deep(raw, max_depth) and _depth_exceeds(document, max_depth):
        raise MalformedRequest(f"{what} is nested more than {max_depth} levels deep")
    return document


def json_object(document: Any, *, what: str) -> dict[str, Any]:
    """`document` when it is a JSON object, else a 400."""
    if not isinstance(document, dict):
        raise MalformedRequest(f"{what} must be a JSON object")
    return document


def parse_json_object(raw: bytes | str, *, what: str) -> dict[str, Any]:
    return json_object(parse_json(raw, what=what), what=what)


def _int64(text: str) -> int:
    if len(text) > _MAX_INT_TEXT:
        raise _Refused(f"the integer {text[:20]}… ({len(text)} characters) is outside the 64-bit range")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _Refused(f"the integer {text} is outside the 64-bit range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is too large for a 64-bit float")
    return value


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number; send a finite number or null")


def _may_be_deep(raw: bytes | str, limit: int) -> bool:
    """False when `raw` has too few brackets to nest past `limit`: most bodies skip the walk."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{") > limit
    # Counting bytes over-counts UTF-16/32 bodies, which only means walking them.
    return raw.count(b"[") + raw.count(b"{") > limit


def _depth_exceeds(document: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` deep: a walk one level at a time, no recursion.

    Only containers are kept from level to level; an 80 KB Envoy node (about 1,000
    containers, 5 deep) takes about as long as its parse.
    """
    level = [document] if isinstance(document, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        deeper: list[Any] = []
        for container in level:
            children = container.values() if type(container) is dict else container
            deeper += [child for child in children if type(child) is dict or type(child) is list]
        level = deeper
    return False
