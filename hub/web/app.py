"""`create_app(store)`: the hub's web app (API, dashboard pages, metrics) on one store.

    app = create_app(store)                      # production: the wall clock
    app = create_app(store, now=lambda: FIXED)   # tests: a fixed clock
    uvicorn.run(app, host="127.0.0.1", port=8080)

The app does not own the store: whoever opened it closes it after the server stops.
Errors are answered in one shape, ``{"error": code, "detail": text}``: 401 when no
valid token came with the request, 403 when the role may not (`hub.access.Forbidden`,
already audited), 400 for refused input (`doorscan.errors.Refusal`, its code), 404 for
an unknown venue, 422 for a request the schema refuses, 503 ``database_unavailable``
while the database server cannot be reached (`StoreUnavailable`: nothing is served
unaudited, docs/decisions.md). Pages (paths outside ``/api/``) get a redirect to the
login page instead of a 401, the dashboard's "not allowed" page instead of a JSON 403,
and a page of their own instead of a JSON 503.

What every response gets (`_guard_requests`): ``X-Content-Type-Options: nosniff``;
API answers ``Cache-Control: no-store`` (they carry identities, and a shared computer
or a proxy keeps what it may cache); a POST whose ``Origin`` (or ``Referer``) names
another site is refused with 403 before any handler runs, API included, so a page
elsewhere cannot make a logged-in browser act with its cookie. The log line of a
request names its method, path and status, never its query string (identities travel
in POST bodies, which are never logged). /docs and /redoc are served from files in the
``fastapi-offline`` package under a strict Content-Security-Policy: they work on a hub
without internet and run no script from anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from doorscan.errors import Refusal
from hub.access import Forbidden
from hub.login_throttle import LoginThrottle
from hub.store.factory import StoreUnavailable
from hub.web.deps import NotAuthenticated, TooManyLogins, WebStore, is_api_path, origin_ok

__all__ = ["API_TITLE", "RELEASES_PATH", "UNAVAILABLE_RETRY_S", "create_app", "error_body"]

API_TITLE = "doorscan hub"
UNAVAILABLE_RETRY_S = 5
"""``Retry-After`` of a 503 while the database is away: about a restart's or a promotion's time."""
_log = logging.getLogger(__name__)
_STATIC = Path(__file__).parent / "static"
RELEASES_PATH = "/releases"
"""Where `create_app` serves the update repository: a unit's ``repo_url`` ends with it."""
_NOT_FOUND_CODES = {"unknown_venue"}
_DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
_DOCS_STATIC = "/static/api-docs"
_requests_log = logging.getLogger("hub.web.requests")
_Next = Callable[[Request], Awaitable[Response]]


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def create_app(
    store: WebStore,
    *,
    now: Callable[[], datetime] | None = None,
    metrics: Any | None = None,
    login_throttle: LoginThrottle | None = None,
    releases_dir: Path | None = None,
) -> FastAPI:
    """The app on `store`; `now` is the clock (default UTC now), `metrics` a `HubMetrics`,
    `login_throttle` how failed logins are slowed (default: 5 per user per 15 min).

    `releases_dir` is served as it is at ``/releases/``, to anyone: the units' update
    repository (`provisioning.release_repo`), public software whose every byte a unit
    checks against the fleet's signatures (`device.updater`), so it needs no login.
    """
    # Here, so that importing this module stays cheap for the CLI.
    from hub.web import api, api_reports, pages

    app = FastAPI(
        docs_url=None,  # served below from local files, under a CSP
        redoc_url=None,
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
    _add_docs(app)
    app.mount(_DOCS_STATIC, StaticFiles(directory=_DOCS_ASSETS), name="api-docs")
    if _STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    if releases_dir is not None:
        app.mount(RELEASES_PATH, StaticFiles(directory=releases_dir), name="releases")
    _add_error_handlers(app)
    _guard_requests(app)
    return app


def _guard_requests(app: FastAPI) -> None:
    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        if request.method == "POST" and not origin_ok(request):
            response = _bad_origin(request)
        else:
            response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if is_api_path(request.url.path):
            response.headers.setdefault("Cache-Control", "no-store")
        elif request.url.path.startswith(RELEASES_PATH + "/"):
            response.headers.setdefault("Cache-Control", _release_caching(request, response))
        _requests_log.info(
            "%s %s %d %.0f ms",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response


def _release_caching(request: Request, response: Response) -> str:
    """Only ``timestamp.json`` changes in place in the update repository; every other file
    is named by its version or hash and never changes. A miss is not kept either: a unit
    looks for the next ``N.root.json`` and must see it as soon as it is published."""
    if response.status_code != 200 or request.url.path.endswith("/timestamp.json"):
        return "no-cache"
    return "public, max-age=31536000, immutable"


def _bad_origin(request: Request) -> Response:
    """The answer to a POST from another site: JSON on the API, the 403 page elsewhere."""
    if is_api_path(request.url.path):
        detail = "a form or script of another site may not post here"
        return JSONResponse(error_body("bad_origin", detail), status_code=403)
    from hub.web.i18n import t
    from hub.web.pages_common import forbidden_page, lang_of

    return forbidden_page(request, t("forbidden_origin", lang_of(request)))


def _inline_script_hashes(html: str) -> str:
    """CSP sources allowing exactly the inline scripts of `html` (FastAPI's page init)."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
    )


def _docs_response(html: str) -> HTMLResponse:
    response = HTMLResponse(html)
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'self' {_inline_script_hashes(html)}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; "
        "connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _add_docs(app: FastAPI) -> None:
    assert app.openapi_url is not None

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=str(app.openapi_url),
            title=f"{API_TITLE} - Swagger UI",
            swagger_js_url=f"{_DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{_DOCS_STATIC}/favicon.png",
        )
        return _docs_response(bytes(page.body).decode())

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=str(app.openapi_url),
            title=f"{API_TITLE} - ReDoc",
            redoc_js_url=f"{_DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{_DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )
        return _docs_response(bytes(page.body).decode())


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

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: StoreUnavailable) -> Response:
        # Refused, not served from a standby: no answer leaves before its audit entry is
        # written, and a standby takes no writes. Once a server takes writes again
        # (restarted, or a standby promoted), the next request works, no hub restart.
        _log.warning(
            "%s %s: the database is unavailable: %s", request.method, request.url.path, exc
        )
        retry = {"Retry-After": str(UNAVAILABLE_RETRY_S)}
        if is_api_path(request.url.path):
            detail = (
                "the hub cannot reach its database (restarting or failing over); "
                "nothing was served: try again in a few seconds"
            )
            body = error_body("database_unavailable", detail)
            return JSONResponse(body, status_code=503, headers=retry)
        from hub.web.pages_common import render

        page = render(request, "unavailable.html", None, "unavailable_title", status=503)
        page.headers.update(retry)
        return page

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
