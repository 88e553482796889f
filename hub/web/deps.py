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
from urllib.parse import urlsplit

from fastapi import Request, Response
from pydantic import BaseModel, Field

from doorscan.errors import DoorscanError
from hub.access import AccessControlledStore, Channel, Principal
from hub.auth import IssuedToken, User, authenticate, checked_login
from hub.store.factory import HubStore

__all__ = [
    "ERROR_RESPONSES",
    "SESSION_COOKIE",
    "ErrorOut",
    "NotAuthenticated",
    "TooManyLogins",
    "WebStore",
    "access_for",
    "bearer_or_cookie",
    "channel_of",
    "client_address",
    "clear_session_cookie",
    "current_user",
    "get_now",
    "get_store",
    "is_api_path",
    "optional_user",
    "origin_ok",
    "principal_for",
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
    503: {
        "model": ErrorOut,
        "description": "the database cannot be reached now (restarting, failing over): "
        "nothing was served; try again after Retry-After",
    },
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


def client_address(request: Request) -> str:
    """The client's address: the TCP peer, or what a trusted proxy said it forwarded for.

    uvicorn rewrites the peer from ``X-Forwarded-For`` only when the connection comes
    from an address given to ``--trusted-proxy`` (`hub.cli_web.WebThread`); from any
    other peer the header is ignored, so nobody picks their own address.
    """
    return request.client.host if request.client else "unknown"


def channel_of(request: Request) -> Channel:
    """The API (paths under /api/ and /metrics) or the dashboard's pages."""
    return Channel.API if is_api_path(request.url.path) else Channel.WEB


def throttled_login(request: Request, user_id: str, password: str) -> IssuedToken | None:
    """`hub.auth.checked_login` behind the app's `LoginThrottle`; `TooManyLogins` while locked."""
    outcome = checked_login(
        get_store(request),
        request.app.state.login_throttle,
        user_id,
        password,
        channel=channel_of(request),
        address=client_address(request),
        now=get_now(request),
    )
    if outcome.wait_s > 0:
        raise TooManyLogins(outcome.wait_s)
    return outcome.issued


def origin_ok(request: Request) -> bool:
    """Whether a POST came from our own pages: its Origin (or Referer) is this host.

    A browser sends Origin with every cross-site POST; a request with neither header
    is a script's or an old browser's and carries no other site's intent.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    host = request.headers.get("host", "")
    return source != "null" and urlsplit(source).netloc == host


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


def principal_for(request: Request, user: User) -> Principal:
    """`user` asking through this request: account, channel and client address."""
    return user.principal(channel_of(request), client_address(request))


def access_for(request: Request, user: User) -> AccessControlledStore:
    """The checked reader for `user`: every read of the web layer goes through it."""
    return AccessControlledStore(get_store(request), principal_for(request, user))


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
