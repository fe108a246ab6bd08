"""Envoy's rejection messages cut down to the reason: purely computational, no I/O.

A proto constraint failure (from `envoy --mode validate` or in a NACK's
error_detail) embeds the whole offending proto, kilobytes or, with thousands of
models, megabytes, between its first line and the reason. Operators need the
first line and the reason.
"""

from __future__ import annotations

import re

_PROTO_DUMP_END = "\n}\n: "
_DEBUG_LINK = re.compile(r"\s*goo\.gle/debug\w*")


def reason_of(text: str) -> str:
    """The first line and the reason after the dumped proto (the text itself when there is none)."""
    text = text.strip()
    if _PROTO_DUMP_END not in text:
        return text
    head = _DEBUG_LINK.sub("", text.partition("\n")[0]).strip()
    reason = text.rsplit(_PROTO_DUMP_END, 1)[-1].strip()
    # A dump that starts on the first line itself ("...: name: \"aegis_routes\"") is cut there.
    head = head.split(' name: "', 1)[0].strip()
    return f"{head} {reason}".strip()
