"""`create_app(store)`: the hub's web app (API, dashboard pages, metrics) on one store.

    app = create_app(store)                      # production: the wall clock
    app = create_app(store, now=lambda: FIXED)   # tests: a fixed clock
    uvicorn.run(app, host="127.0.0.1", port=8080)

The app does not own the store: whoever opened it closes it after the server stops.
Errors are answered in one shape, ``{"error": code, "detail": text}``: 401 when no
valid token came with the request, 403 when the role may not (`hub.access.Forbidden`,
already audited), 400 for refused input (`doorscan.errors.Refusal`, its code), 404 for
an unknown venue, 422 for a request the schema refuses. Pages (paths outside ``/api/``)
get a redirect to the login page instead of a 401, and the dashboard's "not allowed"
page instead of a JSON 403.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from doorscan.errors import Refusal
from hub.access import Forbidden
from hub.login_throttle import LoginThrottle
from hub.web.deps import NotAuthenticated, TooManyLogins, WebStore, is_api_path

__all__ = ["API_TITLE", "create_app", "error_body"]

API_TITLE = "doorscan hub"
_log = logging.getLogger(__name__)
_STATIC = Path(__file__).parent / "static"
_NOT_FOUND_CODES = {"unknown_venue"}


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def create_app(
    store: WebStore,
    *,
    now: Callable[[], datetime] | None = None,
    metrics: Any | None = None,
    login_throttle: LoginThrottle | None = None,
) -> FastAPI:
    """The app on `store`; `now` is the clock (default UTC now), `metrics` a `HubMetrics`,
    `login_throttle` how failed logins are slowed (default: 5 per user per 15 min)."""
    # Here, so that importing this module stays cheap for the CLI.
    from hub.web import api, api_reports, pages

    app = FastAPI(
        title=API_TITLE,
        version="1",
        description="Contact tracing and usage reports of the doorscan hub. "
        "Authenticate with `Authorization: Bearer <token>` (`doorscan-hub token create`, "
        "or POST /api/v1/login). Every read of identities requires a reason and is audited.",
    )
    app.state.store = store
    app.state.now = now
    app.state.metrics = metrics
    app.state.login_throttle = login_throttle or LoginThrottle()
    app.include_router(api.router)
    app.include_router(api_reports.router)
    app.include_router(pages.router)
    if _STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotAuthenticated)
    async def not_authenticated(request: Request, exc: NotAuthenticated) -> Response:
        if is_api_path(request.url.path):
            return JSONResponse(
                error_body("unauthenticated", str(exc)),
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return RedirectResponse(f"/login?next={target}", status_code=303)

    @app.exception_handler(TooManyLogins)
    async def too_many_logins(request: Request, exc: TooManyLogins) -> Response:
        # The API's answer; the login page catches it and shows its own (hub.web.pages).
        return JSONResponse(
            error_body("too_many_logins", str(exc)),
            status_code=429,
            headers={"Retry-After": exc.retry_after_header()},
        )

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if is_api_path(request.url.path):
            return JSONResponse(error_body("forbidden", str(exc)), status_code=403)
        return _forbidden_page(request, exc)

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> Response:
        status = 404 if exc.code in _NOT_FOUND_CODES else 400
        return JSONResponse(error_body(exc.code, exc.reason), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return JSONResponse(error_body("bad_request", problems or "invalid request"), 422)


def _forbidden_page(request: Request, exc: Forbidden) -> Response:
    """The dashboard's own "not allowed" page (`hub.web.pages_common.forbidden_page`)."""
    from hub.web.pages_common import forbidden_page

    return forbidden_page(request, str(exc))
