"""The dashboard: server-rendered pages for tracers, venue owners, reporters and admins.

    GET  /login, POST /login, POST /logout
    GET  /            -> the role's home (tracer /trace, admin /units, others /reports)
    GET  /trace, POST /trace (a trace reads identities and writes an audit entry: POST)
    GET  /units, GET /reports

Everything a page shows comes through the same checked readers as the API
(`hub.access.AccessControlledStore`, `hub.reports`), so a page can never show a role
more than the API would. Text is in Vietnamese unless ``?lang=en`` (kept in a ``lang``
cookie); times are Vietnam time with the zone written (`hub.web.i18n`).

Cross-site request forgery, the choice: the session cookie is ``SameSite=Strict`` (set
by `hub.web.deps.set_session_cookie`), so no other site's form can make the browser send
it, and every POST here also checks the ``Origin`` header (``Referer`` when a browser
sent no ``Origin``): a request naming another host, or ``null``, is refused with the
"not allowed" page before anything is read or written. A request with neither header
is let through: browsers send ``Origin`` on every cross-site POST, and a client that
sends neither (curl, a script) cannot borrow a victim's cookie. No token in the forms,
so the pages need no server-side form state.

Templates are Jinja2 with autoescaping on for every template: names, venue names and
districts come from QR codes and registries typed by strangers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from doorscan.errors import Refusal
from doorscan.wire import UnitStatus, decode_message
from hub import reports
from hub.access import Forbidden, UnitStatusRow
from hub.auth import logout
from hub.web.deps import (
    SESSION_COOKIE,
    TooManyLogins,
    access_for,
    clear_session_cookie,
    get_now,
    get_store,
    optional_user,
    principal_for,
    set_session_cookie,
    throttled_login,
)
from hub.web.i18n import VN_TZ, t
from hub.web.pages_admin import router as admin_router
from hub.web.pages_common import (
    HOME,
    LANG_COOKIE,
    PAGE_ROLES,
    forbidden_page,
    guard,
    int_field,
    lang_of,
    period,
    render,
    venue_names,
)
from hub.web.pages_trace import router as trace_router
from hub.web.svg import bar_chart_svg

__all__ = ["HOME", "LANG_COOKIE", "PAGE_ROLES", "forbidden_page", "router"]

router = APIRouter(include_in_schema=False)
router.include_router(trace_router)
router.include_router(admin_router)

REPORT_DAYS = 14
QUIET_DAYS = 7
_MAX_REPORT_DAYS = 92


# -- login / logout ---------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    # Only a path on this site: "//evil.example" or "https://..." would make login an
    # open redirect that phishing mail could use.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    if optional_user(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return render(
        request,
        "login.html",
        None,
        "login",
        user_id="",
        next=_safe_next(request.query_params.get("next")),
    )


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request) -> Response:
    form = await request.form()
    user_id = str(form.get("user_id", "")).strip()
    password = str(form.get("password", ""))
    try:
        issued = throttled_login(request, user_id, password)
    except TooManyLogins as locked:
        minutes = max(1, round(locked.retry_after_s / 60))
        page = render(
            request,
            "login.html",
            None,
            "login",
            status=429,
            errors=[t("login_locked", lang_of(request), minutes=minutes)],
            user_id=user_id,
            next=_safe_next(str(form.get("next", ""))),
        )
        page.headers["Retry-After"] = locked.retry_after_header()
        return page
    if issued is None:
        # One message for an unknown user and a wrong password: no guessing who exists.
        return render(
            request,
            "login.html",
            None,
            "login",
            status=401,
            errors=[t("login_failed", lang_of(request))],
            user_id=user_id,
            next=_safe_next(str(form.get("next", ""))),
        )
    response = RedirectResponse(_safe_next(str(form.get("next", ""))), status_code=303)
    set_session_cookie(response, request, issued)
    return response


@router.post("/logout")
def logout_submit(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        user = optional_user(request)
        if user is not None:
            logout(get_store(request), token, get_now(request), principal_for(request, user))
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, request)
    return response


@router.get("/")
def home(request: Request) -> Response:
    user = optional_user(request)
    target = "/login" if user is None else HOME[user.role]
    return RedirectResponse(target, status_code=303)


# -- units and reports ------------------------------------------------------------------------


@router.get("/units", response_class=HTMLResponse)
def units_page(request: Request) -> Response:
    user, refused = guard(request, "/units")
    if refused is not None:
        return refused
    assert user is not None
    reader = access_for(request, user)
    names = venue_names(reader)
    try:
        units = reader.units(get_now(request))
        details = unit_details(reader.unit_statuses(units))
        wanted = reader.software_wanted(units)
    except Forbidden:
        return forbidden_page(request)
    units = sorted(units, key=lambda u: not u.silent)  # stable: keeps the module's order
    return render(
        request,
        "units.html",
        user,
        "units",
        units=units,
        details=details,
        wanted=wanted,
        venue_name=lambda v: names.get(v, v),
    )


def unit_details(statuses: Sequence[UnitStatusRow]) -> dict[str, UnitStatus]:
    """The latest status of each unit (health figures, remote config), by unit.

    The access layer hands over only the units the role sees (`unit_statuses`).
    """
    details: dict[str, UnitStatus] = {}
    for stored in statuses:
        try:
            details[stored.unit_id] = decode_message(stored.status_json.encode(), UnitStatus)
        except Refusal:
            continue  # ingest kept only valid statuses; an old row is shown without figures
    return details


@dataclass(frozen=True)
class UsageTable:
    days: list[date]
    rows: list[tuple[str, list[int]]]


def _usage_table(rows: Sequence[reports.UsageRow], label: Callable[[str], str]) -> UsageTable:
    days = sorted({r.day for r in rows})
    cells: dict[str, dict[date, int]] = defaultdict(dict)
    for row in rows:
        cells[row.key][row.day] = row.scans
    return UsageTable(
        days, [(label(k), [cells[k].get(d, 0) for d in days]) for k in sorted(cells, key=label)]
    )


@router.get("/reports", response_class=HTMLResponse)
def reports_page(request: Request) -> Response:
    user, refused = guard(request, "/reports")
    if refused is not None:
        return refused
    assert user is not None
    lang = lang_of(request)
    now = get_now(request)
    today = now.astimezone(VN_TZ).date()
    query = request.query_params
    form = {
        "since": query.get("since") or (today - timedelta(days=REPORT_DAYS - 1)).isoformat(),
        "until": query.get("until") or today.isoformat(),
        "days": query.get("days") or str(QUIET_DAYS),
    }
    reader = access_for(request, user)
    names = venue_names(reader)
    context: dict[str, Any] = {
        "form": form,
        "shown": True,
        "venue_name": lambda v: names.get(v, v),
    }
    try:
        since, until = period(form["since"], form["until"])
        days = int_field(form["days"], "days")
        if not 1 <= days <= 365:
            raise Refusal("bad_days", "days must be 1..365")
        if (until - since).days >= _MAX_REPORT_DAYS:
            raise Refusal("long_period", f"a report covers at most {_MAX_REPORT_DAYS} days")
        first, last = since.date(), until.date()  # Vietnam days: both are in VN_TZ
        by_venue = reader.usage(first, last, "venue", now)
        by_district = reader.usage(first, last, "district", now)
        quiet = reader.quiet_venues(days, now)
        units = reader.units(now)
    except Refusal as refusal:
        return render(
            request,
            "reports.html",
            user,
            "reports",
            status=400,
            errors=[t("bad_input", lang, detail=refusal.reason)],
            **{**context, "shown": False},
        )
    except Forbidden:
        return forbidden_page(request)
    totals: dict[date, int] = defaultdict(int)
    for row in by_venue:
        totals[row.day] += row.scans
    all_days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    chart = bar_chart_svg(
        [(d, totals.get(d, 0)) for d in all_days], title=t("chart_total", lang), lang=lang
    )
    export_query = {"since": first.isoformat(), "until": last.isoformat()}
    return render(
        request,
        "reports.html",
        user,
        "reports",
        **context,
        chart=Markup(chart),  # noqa: S704 every text in it is escaped by svg.py
        usage_tables=[
            (
                t("by_venue", lang),
                t("venue", lang),
                _usage_table(by_venue, lambda v: names.get(v, v)),
            ),
            (t("by_district", lang), t("district", lang), _usage_table(by_district, str)),
        ],
        quiet=quiet,
        offline=[u for u in units if not u.online],
        usage_export=lambda by, ext: (
            f"/api/v1/exports/usage.{ext}?" + urlencode({**export_query, "by": by})
        ),
    )
