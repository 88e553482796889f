"""What every router of the hub's web app shares: the store, the clock, who is asking.

Routers never open stores or read the wall clock themselves: `create_app` puts both on
``app.state`` (tests pass a fixed clock), and these functions read them back.

    @router.get("/api/v1/venues")
    def venues(user: User = Depends(current_user), request: Request) -> ...:
        reader = access_for(request, user)      # role checks, masking and audit

Authentication: a ``Authorization: Bearer <token>`` header (scripts, API tokens), else
the session cookie `SESSION_COOKIE` set at login (the dashboard). `current_user` raises
`NotAuthenticated`, which `hub.web.app` answers with a 401 JSON error on API paths and a
redirect to the login page elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeAlias

from fastapi import Request, Response
from pydantic import BaseModel, Field

from doorscan.errors import DoorscanError
from hub.access import AccessControlledStore
from hub.auth import IssuedToken, User, authenticate, login
from hub.login_throttle import LoginThrottle
from hub.store import HubStore

__all__ = [
    "ERROR_RESPONSES",
    "SESSION_COOKIE",
    "ErrorOut",
    "NotAuthenticated",
    "TooManyLogins",
    "WebStore",
    "access_for",
    "bearer_or_cookie",
    "clear_session_cookie",
    "current_user",
    "get_now",
    "get_store",
    "is_api_path",
    "optional_user",
    "throttled_login",
    "set_session_cookie",
]

SESSION_COOKIE = "doorscan_session"


class ErrorOut(BaseModel):
    """Every API error's body (`hub.web.app` writes it); one model for every router."""

    error: str = Field(description="a short machine-readable code, e.g. no_reason, forbidden")
    detail: str = Field(description="what was wrong, for people")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "refused input (no reason, bad id, empty period)"},
    401: {"model": ErrorOut, "description": "no valid token"},
    403: {"model": ErrorOut, "description": "the role may not (the refusal is audited)"},
    422: {"model": ErrorOut, "description": "the request does not match the schema"},
}
"""``APIRouter(responses=ERROR_RESPONSES)``: the error answers, documented in OpenAPI."""


class NotAuthenticated(DoorscanError, PermissionError):
    """No token, or one that is unknown, expired or revoked: log in first."""


class TooManyLogins(DoorscanError, PermissionError):
    """Too many failed logins for this user id or from this address: wait `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        minutes = max(1, round(retry_after_s / 60))
        super().__init__(f"too many failed logins; try again in {minutes} min")
        self.retry_after_s = retry_after_s

    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, for an HTTP ``Retry-After`` header."""
        return str(max(1, math.ceil(self.retry_after_s)))


WebStore: TypeAlias = HubStore
"""The store the web app runs on: scans, users and tokens, report queries (either backend)."""


def get_store(request: Request) -> WebStore:
    store: WebStore = request.app.state.store
    return store


def get_now(request: Request) -> datetime:
    """The app's clock (``app.state.now``, a callable; tests fix it), default UTC now."""
    now: Callable[[], datetime] | None = getattr(request.app.state, "now", None)
    return now() if now is not None else datetime.now(UTC)


def throttled_login(request: Request, user_id: str, password: str) -> IssuedToken | None:
    """`hub.auth.login` behind the app's `LoginThrottle`; `TooManyLogins` while locked.

    A locked attempt is refused before the password is checked, so guessing gains nothing
    from it. The address is the TCP peer: behind a reverse proxy, the proxy's.
    """
    throttle: LoginThrottle = request.app.state.login_throttle
    address = request.client.host if request.client else "unknown"
    now = get_now(request)
    wait = throttle.retry_after(user_id, address, now)
    if wait > 0:
        raise TooManyLogins(wait)
    issued = login(get_store(request), user_id, password, now)
    if issued is None:
        throttle.failed(user_id, address, now)
    else:
        throttle.succeeded(user_id, address)
    return issued


def is_api_path(path: str) -> bool:
    """API answers are JSON (401/403 with a code); pages redirect or render a page."""
    return path.startswith("/api/") or path == "/metrics"


def bearer_or_cookie(request: Request) -> str | None:
    """The token a request carries: the Bearer header first, then the session cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    return cookie or None


def optional_user(request: Request) -> User | None:
    """The authenticated user, or None (for the login page and redirects)."""
    token = bearer_or_cookie(request)
    if token is None:
        return None
    return authenticate(get_store(request), token, get_now(request))


def current_user(request: Request) -> User:
    """The authenticated user; `NotAuthenticated` (401 / redirect to login) otherwise."""
    user = optional_user(request)
    if user is None:
        raise NotAuthenticated("log in first: no valid token (expired, revoked or missing)")
    return user


def access_for(request: Request, user: User) -> AccessControlledStore:
    """The checked reader for `user`: every read of identities goes through it."""
    return AccessControlledStore(get_store(request), user.principal())


def set_session_cookie(response: Response, request: Request, issued: IssuedToken) -> None:
    """Put a session token in the cookie: HttpOnly, SameSite=Strict, Secure over HTTPS.

    HttpOnly keeps page scripts from reading it; Strict means no other site's page can
    make the browser send it (the cross-site request forgery defence for the forms);
    Secure is set when the request came over HTTPS (behind a TLS proxy, uvicorn's
    ``--proxy-headers`` makes the scheme right).
    """
    max_age = int((issued.expires_at - get_now(request)).total_seconds())
    response.set_cookie(
        SESSION_COOKIE,
        issued.token,
        max_age=max(0, max_age),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
