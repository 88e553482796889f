"""The hub's JSON API for identities and sign-in: login, trace, visitors, timeline, search.

Every read goes through `hub.access.AccessControlledStore` (via
`hub.web.deps.access_for`), which checks the role, masks for venue owners (MoH decision
2666/QĐ-BYT) and writes the audit entry naming the account; this module only turns HTTP
into those calls and their answers into the response models below, so that the OpenAPI
document says exactly what each role gets back. Every identity read takes a required
``reason``, and is a POST: an ID number, a name or a reason in a URL would land in
proxy logs, browser history and the hub's own log; in a body it lands nowhere.

    curl -H "Authorization: Bearer $TOKEN" -X POST http://hub:8080/api/v1/trace \\
        -d '{"id": "064090123456", "since": "2021-08-15T00:00+07:00",
             "until": "2021-08-22T00:00+07:00", "reason": "F0 case 12"}'

Times in answers are UTC (RFC 3339); exports are in Vietnam time (UTC+7), said in
their header. Usage reports, units and metrics are `hub.web.api_reports`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import HTTPBearer
from pydantic import AwareDatetime

from doorscan.timefmt import from_ms
from hub.access import AuditQuery, Timeline, TraceQuestion, VisitorList
from hub.auth import User, logout
from hub.exports import MEDIA, ExportFormat, trace_download
from hub.trace import TracePage, TraceResult
from hub.web.api_models import (
    AuditEntryOut,
    AuditOut,
    AuditVerificationOut,
    ContactOut,
    HourCountOut,
    IndexPersonOut,
    LoginIn,
    PeriodIn,
    PersonMatchOut,
    SearchIn,
    SearchOut,
    TimelineIn,
    TimelineOut,
    TokenOut,
    TraceIn,
    TraceOut,
    TracePageIn,
    TraceSummaryOut,
    UserOut,
    VenueCountOut,
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
    principal_for,
    throttled_login,
)

__all__ = ["router"]

# Documents the Bearer scheme in OpenAPI; `current_user` does the checking (header or cookie).
_bearer = Security(HTTPBearer(auto_error=False, description="an API or session token"))
router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

CurrentUser = Annotated[User, Depends(current_user)]


def _user_out(user: User) -> UserOut:
    return UserOut(
        user_id=user.user_id, display_name=user.display_name, role=user.role, venue_id=user.venue_id
    )


def _asked(body: TraceIn) -> TraceQuestion:
    """The trace `body` asks for (its reason apart)."""
    window = timedelta(minutes=body.window_minutes)
    return TraceQuestion(body.id, body.since, body.until, window, body.depth)


def _run_trace(request: Request, user: User, body: TraceIn, page: TracePage) -> TraceResult:
    started = time.perf_counter()
    result = access_for(request, user).trace(_asked(body), body.reason, get_now(request), page=page)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:  # /metrics' trace_seconds (`hub.web.metrics.HubMetrics`)
        metrics.observe_trace(time.perf_counter() - started)
    return result


def _trace_out(result: TraceResult, page: TracePage, names: dict[str, str]) -> TraceOut:
    index = result.index
    summary = result.summary
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
        summary=TraceSummaryOut(
            by_degree={str(degree): people for degree, people in summary.by_degree.items()},
            by_venue=[
                VenueCountOut(degree=d, venue_id=v, venue_name=names.get(v), people=n)
                for d, v, n in summary.by_venue
            ],
            by_hour=[
                HourCountOut(degree=d, hour=from_ms(h), people=n) for d, h, n in summary.by_hour
            ],
        ),
        total=result.total,
        page=page.number,
        page_size=page.size,
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
        logout(get_store(request), token, get_now(request), principal_for(request, user))
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


@router.post(
    "/venues/{venue_id}/visitors",
    response_model=VisitorListOut,
    tags=["identities"],
    dependencies=[_bearer],
    responses={404: {"model": ErrorOut, "description": "no such venue"}},
)
def api_visitors(
    venue_id: str, body: PeriodIn, user: CurrentUser, request: Request
) -> VisitorListOut:
    """Who checked in at the venue in the period. Tracer: in full; venue: own venue, masked."""
    listing: VisitorList = access_for(request, user).visitors(
        venue_id, body.since, body.until, body.reason, at=get_now(request)
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
def api_trace(body: TracePageIn, user: CurrentUser, request: Request) -> TraceOut:
    """Contacts of a person by degree (tracer only); the rule of `hub.trace`.

    The answer is counted in full (`summary`, `total`) and names one page of contacts;
    each page read is an audit entry of its own. An export names them all.
    """
    page = TracePage(body.page, body.page_size)
    result = _run_trace(request, user, body, page)
    return _trace_out(result, page, access_for(request, user).venue_names())


@router.post(
    "/people/search", response_model=SearchOut, tags=["identities"], dependencies=[_bearer]
)
def api_search(body: SearchIn, user: CurrentUser, request: Request) -> SearchOut:
    """People scanned under a name, diacritics and case ignored (tracer only)."""
    matches = access_for(request, user).find_people(body.name, body.reason, at=get_now(request))
    return SearchOut(
        matches=[
            PersonMatchOut(person_key=m.person_key, id_number=m.id_number, name=m.name)
            for m in matches
        ]
    )


@router.post(
    "/people/timeline", response_model=TimelineOut, tags=["identities"], dependencies=[_bearer]
)
def api_timeline(body: TimelineIn, user: CurrentUser, request: Request) -> TimelineOut:
    """A person's own check-ins with venue names (tracer only)."""
    timeline: Timeline = access_for(request, user).timeline(
        body.id, body.since, body.until, body.reason, at=get_now(request)
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
    account: Annotated[str | None, Query(max_length=64, description="who acted")] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. trace")] = None,
    since: Annotated[AwareDatetime | None, Query()] = None,
    until: Annotated[AwareDatetime | None, Query()] = None,
) -> AuditOut:
    """The newest audit entries matching the filters and the check of the whole chain
    (admin only); reasons are shown opened, to admins only."""
    query = AuditQuery(account=account, action=action, since=since, until=until)
    view = access_for(request, user).audit_log(limit, at=get_now(request), query=query)
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


def _export_trace(fmt: ExportFormat, request: Request, user: User, body: TraceIn) -> Response:
    reader = access_for(request, user)
    export = reader.trace_export(_asked(body), body.reason, get_now(request))
    return trace_download(fmt, export, reader.venue_names())


@router.post(
    "/exports/trace.csv",
    response_class=Response,
    tags=["exports"],
    dependencies=[_bearer],
    responses={200: {"content": {"text/csv": {}}, "description": "the trace as CSV (UTF-8)"}},
)
def api_export_trace_csv(body: TraceIn, user: CurrentUser, request: Request) -> Response:
    """The trace as a CSV file (tracer only); audited as ``export_trace``."""
    return _export_trace("csv", request, user, body)


@router.post(
    "/exports/trace.xlsx",
    response_class=Response,
    tags=["exports"],
    dependencies=[_bearer],
    responses={200: {"content": {MEDIA["xlsx"]: {}}, "description": "the trace as XLSX"}},
)
def api_export_trace_xlsx(body: TraceIn, user: CurrentUser, request: Request) -> Response:
    """The trace as an XLSX workbook (tracer only); audited as ``export_trace``."""
    return _export_trace("xlsx", request, user, body)
