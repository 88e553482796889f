"""What every dashboard page shares: templates, language, the role and origin checks.

Templates are Jinja2 with autoescaping on for every template: names, venue names and
districts come from QR codes and registries typed by strangers. The CSRF choice is
described in `hub.web.pages`; `origin_ok` is its check.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from doorscan.errors import Refusal
from hub.access import AccessControlledStore, Role
from hub.auth import User
from hub.web.deps import optional_user
from hub.web.i18n import VN_TZ, Lang, format_date, format_time, pick_lang, t

__all__ = [
    "HOME",
    "LANG_COOKIE",
    "PAGE_ROLES",
    "forbidden_page",
    "guard",
    "int_field",
    "period",
    "vn_day",
    "lang_of",
    "render",
    "venue_names",
]

LANG_COOKIE = "lang"
HOME: dict[Role, str] = {
    Role.TRACER: "/trace",
    Role.VENUE: "/reports",
    Role.REPORTER: "/reports",
    Role.ADMIN: "/units",
}
"""Where each role lands after login (a venue owner's useful page is its own usage)."""
PAGE_ROLES: dict[str, frozenset[Role]] = {
    "/trace": frozenset({Role.TRACER}),
    "/visitors": frozenset({Role.TRACER, Role.VENUE}),
    "/units": frozenset(Role),
    "/reports": frozenset(Role),
    "/users": frozenset({Role.ADMIN}),
    "/audit": frozenset({Role.ADMIN}),
    "/held": frozenset({Role.ADMIN}),
}
"""Who may open which page; `hub.reports` narrows the venue role to its own venue."""
_NAV_KEYS = {
    "/trace": "trace",
    "/visitors": "visitors",
    "/units": "units",
    "/reports": "reports",
    "/users": "users",
    "/audit": "audit",
    "/held": "held",
}
_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every template, whatever its name: all of them show strangers' text
    undefined=StrictUndefined,  # a misspelt variable fails the tests instead of showing ""
    trim_blocks=True,
    lstrip_blocks=True,
)


# -- rendering --------------------------------------------------------------------------------


def lang_of(request: Request) -> Lang:
    return pick_lang(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE))


def render(
    request: Request,
    template: str,
    user: User | None,
    title_key: str,
    *,
    status: int = 200,
    errors: Sequence[str] = (),
    **context: Any,
) -> HTMLResponse:
    lang = lang_of(request)

    def tr(key: str, **fields: object) -> str:
        return t(key, lang, **fields)

    other = "en" if lang == "vi" else "vi"
    nav = [(p, tr(k)) for p, k in _NAV_KEYS.items() if user.role in PAGE_ROLES[p]] if user else []
    html = _env.get_template(template).render(
        t=tr,
        lang=lang,
        other_lang=other,
        # The same page in the other language, its query kept (a login's ?next= survives).
        switch_href=request.url.path + "?" + urlencode({**request.query_params, "lang": other}),
        user=user,
        nav=nav,
        active=request.url.path,
        page_title=tr(title_key),
        errors=errors,
        ft=lambda value: format_time(value, lang),
        fd=lambda value: format_date(value, lang),
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    # No page may be cached: they show identities, and a shared computer keeps its cache.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'"
    )
    if request.query_params.get("lang") == lang:
        response.set_cookie(
            LANG_COOKIE,
            lang,
            max_age=365 * 24 * 3600,
            samesite="lax",
            httponly=True,
            path="/",
            secure=request.url.scheme == "https",
        )
    return response


def forbidden_page(request: Request, detail: str = "") -> HTMLResponse:
    """The "not allowed" page (403); `hub.web.app` shows it for `Forbidden` on pages."""
    user = optional_user(request)
    lang = lang_of(request)
    role = t(f"role_{user.role.value}", lang) if user else "?"
    # `detail` is the access layer's reason, in English: shown under the page's own words.
    return render(
        request,
        "forbidden.html",
        user,
        "forbidden_title",
        status=403,
        message=t("forbidden_text", lang, role=role),
        detail=detail,
    )


def guard(request: Request, page: str) -> tuple[User | None, Response | None]:
    """The user, or the response to send instead: the login page, or the 403 page."""
    user = optional_user(request)
    if user is None:
        return None, RedirectResponse(f"/login?{urlencode({'next': page})}", status_code=303)
    if user.role not in PAGE_ROLES[page]:
        return user, forbidden_page(request)
    return user, None


def venue_names(reader: AccessControlledStore) -> dict[str, str]:
    return {v.venue_id: v.name for v in reader.venues()}


# -- form fields ----------------------------------------------------------------------------


def vn_day(text: str, what: str) -> date:
    """A day typed as dd/mm/yyyy (how Vietnam writes dates) or sent as YYYY-MM-DD (a date
    field's value); never mm/dd, which would read 05/12 as May."""
    value = text.strip()
    try:
        if "/" in value:
            day, month, year = (int(part) for part in value.split("/"))
            return date(year, month, day)
        return date.fromisoformat(value)
    except ValueError:
        raise Refusal("bad_date", f"{what} {text[:20]!r} is not a date (dd/mm/yyyy)") from None


def period(since_text: str, until_text: str) -> tuple[datetime, datetime]:
    """Whole Vietnam days: from `since`'s midnight to the last millisecond of `until`."""
    since = datetime.combine(vn_day(since_text, "from"), time(0), VN_TZ)
    until = datetime.combine(vn_day(until_text, "to"), time(0), VN_TZ) + timedelta(days=1)
    return since, until - timedelta(milliseconds=1)


def int_field(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise Refusal("bad_number", f"{what} {text[:20]!r} is not a whole number") from None
