"""The operators' pages: people and their tokens, the audit log, and a venue's visitors.

* ``/users`` (admin): every account with its role, state and tokens; add a user, disable
  or enable, reset a password, change a role, lift a login lock, revoke a token. Each
  change goes through `hub.auth` and is an audit entry naming the admin.
* ``/audit`` (admin): the audit log filtered by account, action and days, the chain's
  check, and a CSV export of what is shown (the read is itself audited).
* ``/held`` (admin): scans held apart from traces (`hub.history`), released with a reason
  (audited), and the refused messages' metadata (never a payload: it can hold an identity).
* ``/visitors`` (tracer, venue owner): who checked in at a venue in a period, through
  `hub.access` (masked for a venue owner, with a required reason, audited). A POST:
  the reason is typed by people and travels in the body, never in a URL.

Every form posts; the Origin check of `hub.web.app` covers them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from doorscan.errors import Refusal
from doorscan.timefmt import from_ms
from hub.access import AccessControlledStore, AccountView, AuditQuery, Role
from hub.auth import (
    MIN_PASSWORD_CHARS,
    User,
    change_role,
    create_user,
    reset_password,
    revoke_token,
    set_active,
    unlock,
)
from hub.exports import Cell, to_csv
from hub.web.deps import access_for, get_now, get_store, principal_for
from hub.web.i18n import VN_TZ, t
from hub.web.pages_common import guard, lang_of, period, render, venue_names, vn_day

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
AUDIT_PAGE_ENTRIES = 500
"""Entries one page or export shows; narrow the filters for older ones."""
KNOWN_ACTIONS = (
    "trace",
    "export_trace",
    "visitors",
    "timeline",
    "find_people",
    "refused",
    "login",
    "login_failed",
    "login_locked",
    "logout",
    "token_create",
    "token_revoke",
    "user_add",
    "user_change",
    "unlock",
    "audit_log",
    "dead_letters",
    "dead_letter_payloads",
    "release_held",
    "purge",
)


# -- users ----------------------------------------------------------------------------------


def _users_page(request: Request, user: User, notices: list[str], errors: list[str]) -> Response:
    reader = access_for(request, user)
    accounts: list[AccountView] = reader.accounts(
        get_now(request), request.app.state.login_throttle
    )
    names = venue_names(reader)
    return render(
        request,
        "users.html",
        user,
        "users",
        status=400 if errors else 200,
        errors=errors,
        notices=notices,
        users=accounts,
        roles=[str(r) for r in Role],
        venues=reader.venues(),
        venue_name=lambda v: names.get(v, v),
        min_password=MIN_PASSWORD_CHARS,
    )


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request) -> Response:
    user, refused = guard(request, "/users")
    if refused is not None:
        return refused
    assert user is not None
    return _users_page(request, user, [], [])


async def _user_change(request: Request, user_id: str, change: str) -> Response:
    """Apply one change from the users page, then show the page with what happened."""
    user, refused = guard(request, "/users")
    if refused is not None:
        return refused
    assert user is not None
    form = {k: str(v) for k, v in (await request.form()).items()}
    store, now, by = get_store(request), get_now(request), principal_for(request, user)
    lang = lang_of(request)
    try:
        if change == "add":
            role = Role(form.get("role", ""))
            create_user(
                store,
                form.get("user_id", "").strip(),
                form.get("display_name", ""),
                role,
                form.get("venue_id") or None,
                form.get("password", ""),
                now,
                by=by,
            )
            user_id = form.get("user_id", "").strip()
        elif change == "active":
            set_active(store, user_id, form.get("active") == "yes", now, by)
        elif change == "password":
            reset_password(store, user_id, form.get("password", ""), now, by)
        elif change == "role":
            change_role(
                store, user_id, Role(form.get("role", "")), form.get("venue_id") or None, now, by
            )
        elif change == "unlock":
            unlock(store, request.app.state.login_throttle, user_id, now, by)
        elif change == "revoke-token" and not revoke_token(
            store, form.get("token_hash", ""), now, by
        ):
            raise Refusal("unknown_token", "no such token")
    except ValueError as exc:  # Refusal, a bad role, an id taken (UserExists)
        detail = exc.reason if isinstance(exc, Refusal) else str(exc)
        return _users_page(request, user, [], [t("bad_input", lang, detail=detail)])
    return _users_page(request, user, [t(f"done_{change}", lang, user=user_id)], [])


@router.post("/users/add", response_class=HTMLResponse)
async def user_add(request: Request) -> Response:
    return await _user_change(request, "", "add")


@router.post("/users/{user_id}/{change}", response_class=HTMLResponse)
async def user_change(request: Request, user_id: str, change: str) -> Response:
    if change not in ("active", "password", "role", "unlock", "revoke-token"):
        return RedirectResponse("/users", status_code=303)
    return await _user_change(request, user_id, change)


# -- audit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    account: str
    channel: str
    address: str
    action: str
    reason: str
    details: str


def _row(entry: Any) -> AuditRow:
    params = dict(entry.params)
    principal = params.pop("principal", None) or {}
    account = params.pop("account", None)
    who = principal.get("account") or account or ""
    if account and principal.get("account") and account != principal.get("account"):
        params["account"] = account  # an admin acting on someone else's account
    return AuditRow(
        id=entry.id,
        at=entry.at,
        account=str(who),
        channel=str(principal.get("channel") or params.pop("channel", "") or ""),
        address=str(principal.get("address") or params.pop("address", "") or ""),
        action=entry.action,
        reason=entry.reason,
        details=json.dumps(params, ensure_ascii=False, sort_keys=True, separators=(", ", ": ")),
    )


def _audit_query(request: Request) -> tuple[dict[str, str], AuditQuery]:
    query = request.query_params
    form = {k: query.get(k, "").strip() for k in ("account", "action", "since", "until")}
    since = until = None
    if form["since"] or form["until"]:
        first = vn_day(form["since"], "from") if form["since"] else None
        last = vn_day(form["until"], "to") if form["until"] else None
        if first is not None:
            since = datetime.combine(first, datetime.min.time(), VN_TZ)
        if last is not None:
            until = datetime.combine(last, datetime.min.time(), VN_TZ) + timedelta(days=1)
            until -= timedelta(milliseconds=1)
    return form, AuditQuery(
        account=form["account"] or None, action=form["action"] or None, since=since, until=until
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request) -> Response:
    user, refused = guard(request, "/audit")
    if refused is not None:
        return refused
    assert user is not None
    lang = lang_of(request)
    try:
        form, query = _audit_query(request)
    except Refusal as refusal:
        form, query = {k: "" for k in ("account", "action", "since", "until")}, AuditQuery()
        errors = [t("bad_input", lang, detail=refusal.reason)]
    else:
        errors = []
    view = access_for(request, user).audit_log(AUDIT_PAGE_ENTRIES, get_now(request), query)
    return render(
        request,
        "audit.html",
        user,
        "audit",
        status=400 if errors else 200,
        errors=errors,
        form=form,
        entries=[_row(e) for e in view.entries],
        check=view.verification,
        known_actions=KNOWN_ACTIONS,
    )


def _csv_row(r: AuditRow) -> list[Cell]:
    at: Cell = r.at.astimezone(VN_TZ)
    return [r.id, at, r.account, r.channel, r.address, r.action, r.reason, r.details]


@router.get("/audit.csv")
def audit_export(request: Request) -> Response:
    user, refused = guard(request, "/audit")
    if refused is not None:
        return refused
    assert user is not None
    try:
        _form, query = _audit_query(request)
    except Refusal as refusal:
        return Response(refusal.reason, status_code=400, media_type="text/plain; charset=utf-8")
    view = access_for(request, user).audit_log(AUDIT_PAGE_ENTRIES, get_now(request), query)
    headers = ("id", "time (UTC+7)", "account", "channel", "address", "action", "reason", "details")
    rows = [_csv_row(r) for r in map(_row, view.entries)]
    return Response(
        to_csv(headers, rows),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="audit.csv"',
            "Cache-Control": "no-store",
        },
    )


# -- visitors -------------------------------------------------------------------------------


def _visitors_form(request: Request, reader: AccessControlledStore) -> dict[str, str]:
    today = get_now(request).astimezone(VN_TZ).date()
    venues = reader.venues()
    return {
        "venue_id": venues[0].venue_id if venues else "",
        "since": today.strftime("%d/%m/%Y"),
        "until": today.strftime("%d/%m/%Y"),
        "reason": "",
    }


@router.get("/visitors", response_class=HTMLResponse)
def visitors_page(request: Request) -> Response:
    user, refused = guard(request, "/visitors")
    if refused is not None:
        return refused
    assert user is not None
    reader = access_for(request, user)
    return render(
        request,
        "visitors.html",
        user,
        "visitors",
        form=_visitors_form(request, reader),
        venues=reader.venues(),
        listing=None,
        at=from_ms,
    )


@router.post("/visitors", response_class=HTMLResponse)
async def visitors_submit(request: Request) -> Response:
    user, refused = guard(request, "/visitors")
    if refused is not None:
        return refused
    assert user is not None
    reader = access_for(request, user)
    raw = await request.form()
    form = {k: str(raw.get(k, "")) for k in ("venue_id", "since", "until", "reason")}
    context: dict[str, Any] = {"form": form, "venues": reader.venues(), "at": from_ms}
    try:
        since, until = period(form["since"], form["until"])
        listing = reader.visitors(form["venue_id"], since, until, form["reason"], get_now(request))
    except Refusal as refusal:
        errors = [t("bad_input", lang_of(request), detail=refusal.reason)]
        return render(
            request,
            "visitors.html",
            user,
            "visitors",
            status=400,
            errors=errors,
            listing=None,
            **context,
        )
    return render(request, "visitors.html", user, "visitors", listing=listing, **context)


# -- held scans and refused messages -------------------------------------------------------------

HELD_PAGE_ROWS = 200
"""Rows of each list on the page; the command line lists more (`doorscan-hub held --limit`)."""


def _held_page(request: Request, user: User, notices: list[str], errors: list[str]) -> Response:
    reader = access_for(request, user)
    now = get_now(request)
    names = venue_names(reader)
    return render(
        request,
        "held.html",
        user,
        "held",
        status=400 if errors else 200,
        errors=errors,
        notices=notices,
        held=reader.held(HELD_PAGE_ROWS, now),
        letters=reader.dead_letters(HELD_PAGE_ROWS, now),
        venue_name=lambda v: names.get(v, v),
    )


@router.get("/held", response_class=HTMLResponse)
def held_page(request: Request) -> Response:
    user, refused = guard(request, "/held")
    if refused is not None:
        return refused
    assert user is not None
    return _held_page(request, user, [], [])


@router.post("/held/release", response_class=HTMLResponse)
async def held_release(request: Request) -> Response:
    user, refused = guard(request, "/held")
    if refused is not None:
        return refused
    assert user is not None
    form = await request.form()
    scan_ids = [str(v) for v in form.getlist("scan_id")]
    lang = lang_of(request)
    try:
        if not scan_ids:
            raise Refusal("nothing_chosen", "choose the scans to release")
        released = access_for(request, user).release_held(
            scan_ids, str(form.get("reason", "")), get_now(request)
        )
    except Refusal as refusal:
        return _held_page(request, user, [], [t("bad_input", lang, detail=refusal.reason)])
    return _held_page(request, user, [t("done_release", lang, n=len(released))], [])
