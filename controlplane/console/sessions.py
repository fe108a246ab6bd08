"""Console sessions: a random id per sign-in, kept server-side with the principal and a CSRF token.

No I/O: the clock is passed in. The cookie carries only the session id; the store keeps
its SHA-256 digest, so neither a memory dump nor a repr of the store yields a usable id,
and the API token used to sign in is never kept at all (only the principal it named).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from registry.auth import Principal

# A working day: long enough to watch a rollout through, short enough that a forgotten
# browser does not stay signed in for good (Grafana's default is 7 days, Argo CD's 24 h).
SESSION_SECONDS = 8 * 3600
# Sessions need a valid API token, so only people who hold one can create them; the cap
# bounds memory against a script that signs in in a loop (the oldest session goes first).
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf_token: str = field(repr=False)
    expires_at: float

    def csrf_matches(self, presented: str) -> bool:
        """Constant time, so a forged form cannot learn the token byte by byte."""
        return hmac.compare_digest(presented.encode(), self.csrf_token.encode())


@dataclass
class SessionStore:
    clock: Callable[[], float]
    lifetime_seconds: float = SESSION_SECONDS
    max_sessions: int = MAX_SESSIONS
    _sessions: OrderedDict[bytes, Session] = field(default_factory=OrderedDict, repr=False)

    def create(self, principal: Principal) -> tuple[str, Session]:
        """A new session id (for the cookie, never stored) and its session."""
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), self.clock() + self.lifetime_seconds)
        self._sessions[_digest(session_id)] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id; an expired one is forgotten here."""
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._sessions[key]
            return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_digest(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()
