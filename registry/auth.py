"""Bearer tokens and nested roles (admin ⊃ operator ⊃ viewer), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import IntEnum

from registry.errors import Forbidden, Unauthorized


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role and a name for the history, never the token itself."""

    role: Role
    name: str


class TokenConfigError(ValueError):
    """AEGIS_API_TOKENS cannot be parsed; the message names the entry, never the secret."""


@dataclass(frozen=True)
class TokenTable:
    # Tokens are kept as SHA-256 digests: equal lengths for compare_digest, and a
    # memory dump or a repr shows no usable secret.
    entries: tuple[tuple[bytes, Principal], ...] = field(repr=False, default=())

    @classmethod
    def parse(cls, spec: str) -> TokenTable:
        """`role:token` or `role:name:token` pairs, comma-separated."""
        entries: list[tuple[bytes, Principal]] = []
        for index, item in enumerate(part.strip() for part in spec.split(",")):
            if not item:
                continue
            pieces = item.split(":")
            if len(pieces) == 2:
                role_label, token = pieces
                name = role_label
            elif len(pieces) == 3:
                role_label, name, token = pieces
            else:
                raise TokenConfigError(
                    f"AEGIS_API_TOKENS entry {index + 1} is not 'role:token' or 'role:name:token'"
                )
            try:
                role = Role[role_label.strip().upper()]
            except KeyError:
                raise TokenConfigError(
                    f"AEGIS_API_TOKENS entry {index + 1}: role {role_label!r} is not one of "
                    "admin, operator, viewer"
                ) from None
            if not token:
                raise TokenConfigError(f"AEGIS_API_TOKENS entry {index + 1} has an empty token")
            entries.append((_digest(token), Principal(role, name.strip() or role.label)))
        return cls(tuple(entries))

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized(
                "this endpoint needs a token: send 'Authorization: Bearer <token>'"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        presented = _digest(token.strip())
        found: Principal | None = None
        # Compare against every entry so the time taken does not reveal which matched.
        for digest, principal in self.entries:
            if hmac.compare_digest(digest, presented):
                found = principal
        if found is None:
            raise Unauthorized("the token is not valid; check AEGIS_TOKEN or ask an admin for one")
        return found


def require(principal: Principal, role: Role) -> None:
    if principal.role < role:
        raise Forbidden(
            f"this needs the {role.label} role; the token of {principal.name!r} has "
            f"{principal.role.label}"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
