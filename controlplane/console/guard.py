"""Who is signed in, with which role, and whether a form is genuine: the console's checks.

The role rules are the API's (`registry.auth.require`): viewer pages, operator actions.
Every form that changes something carries the session's CSRF token, compared in
constant time; a request without it is a 403 and changes nothing. The session cookie is
HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), has a
lifetime, and is Secure when the console is reached over TLS or AEGIS_PUBLIC_URL is https.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from aiohttp import web

from controlplane.console.sessions import Session, SessionStore
from registry.auth import Role, require
from registry.errors import Forbidden, RegistryError

SESSION_COOKIE = "aegis_session"
# Before a session exists the sign-in form is protected by a double submit: a random value
# in a cookie and the same value in the form (login CSRF: a page signing you in as someone else).
SIGN_IN_COOKIE = "aegis_sign_in"
SIGN_IN_SECONDS = 600
CSRF_FIELD = "csrf_token"


class SignInNeeded(RegistryError):
    status = 401
    code = "unauthorized"


@dataclass(frozen=True)
class ConsoleConfig:
    sessions: SessionStore
    # AEGIS_PUBLIC_URL is https: a TLS proxy in front, so the browser talks TLS.
    public_url_is_https: bool


CONFIG = web.AppKey("console_config", ConsoleConfig)


def session_of(request: web.Request) -> Session | None:
    return request.app[CONFIG].sessions.get(request.cookies.get(SESSION_COOKIE))


def require_role(request: web.Request, role: Role) -> Session:
    """The signed-in session, if its role is at least `role` (401 without one, 403 below it)."""
    session = session_of(request)
    if session is None:
        raise SignInNeeded("sign in first: your session ended or you have not signed in")
    require(session.principal, role)
    return session


async def require_form(request: web.Request, role: Role) -> tuple[Session, dict[str, str]]:
    """A POSTed form from a signed-in session of `role`, with that session's CSRF token."""
    session = require_role(request, role)
    form = {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
    if not session.csrf_matches(form.get(CSRF_FIELD, "")):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
    return session, form


def check_sign_in_form(request: web.Request, form: dict[str, str]) -> None:
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    presented = form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise Forbidden("the sign-in form expired or did not come from this console: reload it")


def new_sign_in_token(request: web.Request, response: web.StreamResponse) -> str:
    token = secrets.token_urlsafe(24)
    _set_cookie(request, response, SIGN_IN_COOKIE, token, max_age=SIGN_IN_SECONDS)
    return token


def start_session(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    lifetime = int(request.app[CONFIG].sessions.lifetime_seconds)
    _set_cookie(request, response, SESSION_COOKIE, session_id, max_age=lifetime)
    response.del_cookie(SIGN_IN_COOKIE, path=_path(request))


def end_session(request: web.Request, response: web.StreamResponse) -> None:
    request.app[CONFIG].sessions.end(request.cookies.get(SESSION_COOKIE))
    response.del_cookie(SESSION_COOKIE, path=_path(request))


def _set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, *, max_age: int
) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=_path(request), httponly=True, samesite="Strict",
        secure=request.secure or request.app[CONFIG].public_url_is_https,
    )


def _path(request: web.Request) -> str:
    """The console's prefix (`/ui/`): the cookies go to no other path of the server."""
    return request.app.router["models"].url_for().path
