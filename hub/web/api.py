"""The hub's JSON API for identities and sign-in: login, trace, visitors, timeline, search.

Every read of identities goes through `hub.access.AccessControlledStore` (via
`hub.web.deps.access_for`), which checks the role, masks for venue owners (MoH decision
2666/QĐ-BYT) and writes the audit entry; this module only turns HTTP into those calls
and their answers into the response models below, so that the OpenAPI document says
exactly what each role gets back. Every identity read takes a required ``reason``.

    curl -H "Authorization: Bearer $TOKEN" -X POST http://hub:8080/api/v1/trace \\
        -d '{"id": "064090123456", "since": "2021-08-15T00:00+07:00",
             "until": "2021-08-22T00:00+07:00", "reason": "F0 case 12"}'

Times in answers are UTC (RFC 3339); exports are in Vietnam time (UTC+7), said in
their header. Usage reports, units and metrics are `hub.web.api_reports`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import HTTPBearer
from pydantic import AwareDatetime

from doorscan.errors import Refusal
from hub.access import Timeline, VisitorList
from hub.auth import User, logout
from hub.exports import Cell, to_csv, to_xlsx
from hub.trace import MAX_DEPTH, TraceResult
from hub.web.api_models import (
    MAX_WINDOW_MINUTES,
    AuditEntryOut,
    AuditOut,
    AuditVerificationOut,
    ContactOut,
    IndexPersonOut,
    LoginIn,
    PersonMatchOut,
    SearchOut,
    TimelineOut,
    TokenOut,
    TraceIn,
    TraceOut,
    UserOut,
    VenueOut,
    VisitorListOut,
    VisitorOut,
    VisitOut,
)
from hub.web.deps import (
    ERROR_RESPONSES,
    ErrorOut,
    NotAuthenticated,
    access_for,
    bearer_or_cookie,
    clear_session_cookie,
    current_user,
    get_now,
    get_store,
    throttled_login,
)

__all__ = ["router"]

VIETNAM = timezone(timedelta(hours=7))
_EARLIEST = datetime(1971, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""Times outside these bounds name no scan and would overflow the millisecond clock."""


# Documents the Bearer scheme in OpenAPI; `current_user` does the checking (header or cookie).
_bearer = Security(HTTPBearer(auto_error=False, description="an API or session token"))
router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

CurrentUser = Annotated[User, Depends(current_user)]
Reason = Annotated[
    str,
    Query(
        min_length=1,
        max_length=500,
        description="why identities are read (e.g. the case number); written to the audit log",
    ),
]
Since = Annotated[AwareDatetime, Query(description="start of the period (with UTC offset)")]
Until = Annotated[AwareDatetime, Query(description="end of the period (with UTC offset)")]


def _check_period(since: datetime, until: datetime) -> None:
    for value in (since, until):
        if not _EARLIEST <= value <= _LATEST:
            raise Refusal("bad_time", f"times must lie between {_EARLIEST.year} and 9000")
    if since > until:
        raise Refusal("empty_period", "since is after until")


def _user_out(user: User) -> UserOut:
    return UserOut(
        user_id=user.user_id, display_name=user.display_name, role=user.role, venue_id=user.venue_id
    )


def _venue_names(request: Request) -> dict[str, str]:
    return {v.venue_id: v.name for v in get_store(request).venues()}


def _run_trace(request: Request, user: User, body: TraceIn) -> TraceResult:
    _check_period(body.since, body.until)
    started = time.perf_counter()
    result = access_for(request, user).trace(
        body.id,
        body.since,
        body.until,
        timedelta(minutes=body.window_minutes),
        body.depth,
        body.reason,
        at=get_now(request),
    )
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:  # /metrics' trace_seconds (`hub.web.metrics.HubMetrics`)
        metrics.observe_trace(time.perf_counter() - started)
    return result


def _trace_out(result: TraceResult, names: dict[str, str]) -> TraceOut:
    index = result.index
    return TraceOut(
        index=IndexPersonOut(
            person_key=index.person_key,
            id_number=index.id_number,
            name=index.name,
            visits=[
                VisitOut(venue_id=v.venue_id, venue_name=names.get(v.venue_id), at=v.at)
                for v in index.visits
            ],
        ),
        contacts=[
            ContactOut(
                person_key=c.person_key,
                id_number=c.id_number,
                name=c.name,
                degree=c.degree,
                exposed_at=c.exposed_at,
                venue_id=c.venue_id,
                venue_name=names.get(c.venue_id),
                via=c.via,
            )
            for c in result.contacts
        ],
        since=result.params.since,
        until=result.params.until,
        window_minutes=result.params.window / timedelta(minutes=1),
        depth=result.params.depth,
    )


# -- sign-in ---------------------------------------------------------------------------------


@router.post(
    "/login",
    response_model=TokenOut,
    tags=["auth"],
    responses={429: {"model": ErrorOut, "description": "too many failed logins: wait"}},
)
def api_login(body: LoginIn, request: Request) -> TokenOut:
    """A session token (12 h) for a user id and password; 401 for any wrong pair, 429
    (with Retry-After) after 5 failures for the user id in 15 minutes."""
    issued = throttled_login(request, body.user_id, body.password)
    if issued is None:
        raise NotAuthenticated("wrong user id or password (or the user is disabled)")
    return TokenOut(token=issued.token, expires_at=issued.expires_at, user=_user_out(issued.user))


@router.post("/logout", status_code=204, tags=["auth"], dependencies=[_bearer])
def api_logout(user: CurrentUser, request: Request) -> Response:
    """Revoke the token this request came with (header or session cookie)."""
    token = bearer_or_cookie(request)
    if token is not None:
        logout(get_store(request), token, get_now(request))
    response = Response(status_code=204)
    clear_session_cookie(response, request)
    return response


@router.get("/me", response_model=UserOut, tags=["auth"], dependencies=[_bearer])
def api_me(user: CurrentUser) -> UserOut:
    """Who the token belongs to, and their role."""
    return _user_out(user)


# -- registry --------------------------------------------------------------------------------


@router.get("/venues", response_model=list[VenueOut], tags=["venues"], dependencies=[_bearer])
def api_venues(user: CurrentUser, request: Request) -> list[VenueOut]:
    """The venue registry; a venue owner sees its own venue only."""
    return [
        VenueOut(venue_id=v.venue_id, name=v.name, address=v.address, district=v.district)
        for v in access_for(request, user).venues()
    ]


# -- identities ------------------------------------------------------------------------------


@router.get(
    "/venues/{venue_id}/visitors",
    response_model=VisitorListOut,
    tags=["identities"],
    dependencies=[_bearer],
    responses={404: {"model": ErrorOut, "description": "no such venue"}},
)
def api_visitors(
    venue_id: str,
    since: Since,
    until: Until,
    reason: Reason,
    user: CurrentUser,
    request: Request,
) -> VisitorListOut:
    """Who checked in at the venue in the period. Tracer: in full; venue: own venue, masked."""
    _check_period(since, until)
    listing: VisitorList = access_for(request, user).visitors(
        venue_id, since, until, reason, at=get_now(request)
    )
    return VisitorListOut(
        venue_id=listing.venue_id,
        since=listing.since,
        until=listing.until,
        masked=listing.masked,
        visitors=[
            VisitorOut(
                at=datetime.fromtimestamp(v.at_ms / 1000, tz=UTC),
                kind=v.kind,
                id_number=v.id_number,
                name=v.name,
            )
            for v in listing.visitors
        ],
    )


@router.post("/trace", response_model=TraceOut, tags=["identities"], dependencies=[_bearer])
def api_trace(body: TraceIn, user: CurrentUser, request: Request) -> TraceOut:
    """Contacts of a person by degree (tracer only); the rule of `hub.trace`."""
    return _trace_out(_run_trace(request, user, body), _venue_names(request))


@router.get("/people/search", response_model=SearchOut, tags=["identities"], dependencies=[_bearer])
def api_search(
    name: Annotated[str, Query(min_length=1, max_length=200, description="diacritics optional")],
    reason: Reason,
    user: CurrentUser,
    request: Request,
) -> SearchOut:
    """People scanned under a name, diacritics and case ignored (tracer only)."""
    matches = access_for(request, user).find_people(name, reason, at=get_now(request))
    return SearchOut(
        matches=[
            PersonMatchOut(person_key=m.person_key, id_number=m.id_number, name=m.name)
            for m in matches
        ]
    )


@router.get(
    "/people/{id}/timeline",
    response_model=TimelineOut,
    tags=["identities"],
    dependencies=[_bearer],
)
def api_timeline(
    id: str,
    since: Since,
    until: Until,
    reason: Reason,
    user: CurrentUser,
    request: Request,
) -> TimelineOut:
    """A person's own check-ins with venue names (tracer only)."""
    _check_period(since, until)
    timeline: Timeline = access_for(request, user).timeline(
        id, since, until, reason, at=get_now(request)
    )
    return TimelineOut(
        person_key=timeline.person_key,
        id_number=timeline.id_number,
        name=timeline.name,
        since=timeline.since,
        until=timeline.until,
        visits=[
            VisitOut(venue_id=v.venue_id, venue_name=v.venue_name, at=v.at) for v in timeline.visits
        ],
    )


# -- audit -----------------------------------------------------------------------------------


@router.get("/audit", response_model=AuditOut, tags=["audit"], dependencies=[_bearer])
def api_audit(
    user: CurrentUser,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditOut:
    """The newest audit entries and the check of the whole chain (admin only)."""
    view = access_for(request, user).audit_log(limit, at=get_now(request))
    check = view.verification
    return AuditOut(
        entries=[
            AuditEntryOut(
                id=e.id,
                at=e.at,
                action=e.action,
                reason=e.reason,
                params=e.params,
                prev_hash=e.prev_hash,
                hash=e.hash,
            )
            for e in view.entries
        ],
        verification=AuditVerificationOut(
            ok=check.ok,
            entries=check.entries,
            first_bad_id=check.first_bad_id,
            problem=check.problem,
            head_hash=check.head_hash,
        ),
    )


# -- exports ---------------------------------------------------------------------------------

_TRACE_HEADERS = (
    "degree",
    "id_number",
    "name",
    "venue_id",
    "venue",
    "time (UTC+7)",
    "via",
)
_MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


def _trace_rows(result: TraceResult, names: dict[str, str]) -> list[list[Cell]]:
    """The index person's visits (degree 0), then every contact, times in Vietnam time."""
    index = result.index
    rows: list[list[Cell]] = [
        [
            0,
            index.id_number,
            index.name or "",
            v.venue_id,
            names.get(v.venue_id, ""),
            v.at.astimezone(VIETNAM),
            "",
        ]
        for v in index.visits
    ]
    rows += [
        [
            c.degree,
            c.id_number,
            c.name,
            c.venue_id,
            names.get(c.venue_id, ""),
            c.exposed_at.astimezone(VIETNAM),
            c.via,
        ]
        for c in result.contacts
    ]
    return rows


def _export_trace(
    fmt: Literal["csv", "xlsx"],
    request: Request,
    user: User,
    id: str,
    since: datetime,
    until: datetime,
    window_minutes: float,
    depth: int,
    reason: str,
) -> Response:
    body = TraceIn.model_construct(
        id=id, since=since, until=until, window_minutes=window_minutes, depth=depth, reason=reason
    )
    result = _run_trace(request, user, body)
    rows = _trace_rows(result, _venue_names(request))
    content = (
        to_csv(_TRACE_HEADERS, rows) if fmt == "csv" else to_xlsx(_TRACE_HEADERS, rows, "trace")
    )
    return Response(
        content,
        media_type=_MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="trace.{fmt}"'},
    )


IdQuery = Annotated[str, Query(min_length=1, max_length=64, description="the index person")]
WindowQuery = Annotated[float, Query(ge=0, le=MAX_WINDOW_MINUTES)]
DepthQuery = Annotated[int, Query(ge=0, le=MAX_DEPTH)]


@router.get(
    "/exports/trace.csv",
    response_class=Response,
    tags=["exports"],
    dependencies=[_bearer],
    responses={200: {"content": {"text/csv": {}}, "description": "the trace as CSV (UTF-8)"}},
)
def api_export_trace_csv(
    id: IdQuery,
    since: Since,
    until: Until,
    reason: Reason,
    user: CurrentUser,
    request: Request,
    window_minutes: WindowQuery = 60,
    depth: DepthQuery = 2,
) -> Response:
    """The trace as a CSV file (tracer only); audited like a trace."""
    return _export_trace("csv", request, user, id, since, until, window_minutes, depth, reason)


@router.get(
    "/exports/trace.xlsx",
    response_class=Response,
    tags=["exports"],
    dependencies=[_bearer],
    responses={200: {"content": {_MEDIA["xlsx"]: {}}, "description": "the trace as XLSX"}},
)
def api_export_trace_xlsx(
    id: IdQuery,
    since: Since,
    until: Until,
    reason: Reason,
    user: CurrentUser,
    request: Request,
    window_minutes: WindowQuery = 60,
    depth: DepthQuery = 2,
) -> Response:
    """The trace as an XLSX workbook (tracer only); audited like a trace."""
    return _export_trace("xlsx", request, user, id, since, until, window_minutes, depth, reason)
