"""Why the model server refuses to start: each error's message is what the operator reads."""

from __future__ import annotations


class ModelServerError(Exception):
    """Base of every reason the server stops before serving; exit code 1."""


class ArtifactRejected(ModelServerError):
    """The downloaded bytes or their signature do not match the registry's record (tampering)."""


class ArtifactUnavailable(ModelServerError):
    """The registry could not be asked or refused to hand out the version or its bytes."""
