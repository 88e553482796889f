"""The JSON API of counts and health: units, usage reports, quiet venues, usage exports, metrics.

Nothing here reads an identity, so no ``reason`` is asked; the role rules are
`hub.reports`' (admin, reporter and tracer see every venue, a venue owner its own).
/metrics is for the operators' Prometheus: it needs a token of the admin, reporter or
tracer role (an API token from ``doorscan-hub token create``, sent as
``authorization: Bearer``), because its counts are the whole fleet's.

    curl -H "Authorization: Bearer $TOKEN" \\
        "http://hub:8080/api/v1/reports/usage?since=2026-01-01&until=2026-01-31&by=district"

Days are Vietnam days (UTC+7); times in answers are UTC (RFC 3339). Exports are
`hub.exports`' CSV and XLSX, where no cell can start a formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from hub import reports
from hub.access import Forbidden, Role
from hub.auth import User
from hub.exports import Cell, to_csv, to_xlsx
from hub.web.deps import access_for, current_user, get_now
from hub.web.metrics import CONTENT_TYPE, HubMetrics

__all__ = ["router"]


class ErrorOut(BaseModel):
    error: str = Field(description="a short machine-readable code, e.g. forbidden")
    detail: str = Field(description="what was wrong, for people")


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "refused input (an empty or too long period)"},
    401: {"model": ErrorOut, "description": "no valid token"},
    403: {"model": ErrorOut, "description": "the role may not (another venue's counts)"},
    422: {"model": ErrorOut, "description": "the request does not match the schema"},
}
_bearer = Security(HTTPBearer(auto_error=False, description="an API or session token"))
router = APIRouter(responses=_ERRORS, dependencies=[_bearer])

CurrentUser = Annotated[User, Depends(current_user)]
DEFAULT_REPORT_DAYS = 30
_METRICS_ROLES = (Role.ADMIN, Role.REPORTER, Role.TRACER)


# -- models ----------------------------------------------------------------------------------


class UnitOut(BaseModel):
    unit_id: str
    venue_id: str | None = Field(description="null: the unit talks but is not registered")
    registered: bool = Field(description="false: not in the registry; an operator should look")
    online: bool = Field(description="its latest status (retained, or the broker's last will)")
    last_seen: datetime | None = Field(description="when the hub got its latest status")
    last_scan: datetime | None = Field(description="its newest scan's time")
    backlog: int | None = Field(description="scans waiting on the unit, from its status")
    clock_trusted: bool | None = Field(
        description="whether its clock is trusted, from its status, else from its newest scan"
    )
    version: str | None = Field(description="its software version, from its status")
    silent: bool = Field(description="no status and no scan for longer than silent_minutes")


class UsageRowOut(BaseModel):
    day: date = Field(description="a day in Vietnam time (UTC+7)")
    key: str = Field(description="the venue id or the district")
    label: str = Field(description="the venue's name, or the district")
    scans: int


class UsageOut(BaseModel):
    since: date
    until: date
    by: Literal["venue", "district"]
    rows: list[UsageRowOut] = Field(description="days without scans are left out")


class QuietVenueOut(BaseModel):
    venue_id: str
    name: str
    district: str
    last_scan: datetime | None = Field(description="null: never a scan")


# -- parameters ------------------------------------------------------------------------------

# Years bounded so that a day converts to milliseconds without overflow, whatever is asked.
SinceDay = Annotated[
    date | None,
    Query(
        ge=date(2000, 1, 1),
        le=date(2999, 12, 31),
        description=f"first day (Vietnam time); default {DEFAULT_REPORT_DAYS - 1} days "
        "before until",
    ),
]
UntilDay = Annotated[
    date | None,
    Query(
        ge=date(2000, 1, 1),
        le=date(2999, 12, 31),
        description="last day, included (Vietnam time); default today",
    ),
]
By = Annotated[Literal["venue", "district"], Query(description="count per venue or district")]
VenueFilter = Annotated[
    str | None,
    Query(
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="only this venue (a venue owner may name only its own)",
    ),
]


def _period(request: Request, since: date | None, until: date | None) -> tuple[date, date]:
    last = until or reports.vietnam_today(get_now(request))
    first = since or last - timedelta(days=DEFAULT_REPORT_DAYS - 1)
    return first, last


def _usage(
    request: Request,
    user: User,
    since: date | None,
    until: date | None,
    by: Literal["venue", "district"],
    venue_id: str | None,
) -> UsageOut:
    first, last = _period(request, since, until)
    reader = access_for(request, user)
    rows = reader.usage(first, last, by, get_now(request), venue_id=venue_id)
    names = reader.venue_names() if by == "venue" else {}
    return UsageOut(
        since=first,
        until=last,
        by=by,
        rows=[
            UsageRowOut(day=r.day, key=r.key, label=names.get(r.key, r.key), scans=r.scans)
            for r in rows
        ],
    )


# -- endpoints -------------------------------------------------------------------------------


@router.get("/api/v1/units", response_model=list[UnitOut], tags=["reports"])
def api_units(
    user: CurrentUser,
    request: Request,
    silent_minutes: Annotated[
        int, Query(ge=1, le=10_080, description="silent after this long without a status or scan")
    ] = 30,
) -> list[UnitOut]:
    """Every unit with its health; units that talk without being registered come first."""
    units = access_for(request, user).units(
        get_now(request), silent_after=timedelta(minutes=silent_minutes)
    )
    return [UnitOut(**u.__dict__) for u in units]


@router.get("/api/v1/reports/usage", response_model=UsageOut, tags=["reports"])
def api_usage(
    user: CurrentUser,
    request: Request,
    by: By = "venue",
    since: SinceDay = None,
    until: UntilDay = None,
    venue_id: VenueFilter = None,
) -> UsageOut:
    """Scans per Vietnam day per venue or district (at most 366 days)."""
    return _usage(request, user, since, until, by, venue_id)


@router.get("/api/v1/reports/quiet-venues", response_model=list[QuietVenueOut], tags=["reports"])
def api_quiet_venues(
    user: CurrentUser,
    request: Request,
    days: Annotated[int, Query(ge=1, le=3650, description="no scan for this many days")] = 7,
) -> list[QuietVenueOut]:
    """Venues with no scan in the last `days` days, or none ever."""
    quiet = access_for(request, user).quiet_venues(days, get_now(request))
    return [QuietVenueOut(**q.__dict__) for q in quiet]


def _export_rows(usage: UsageOut) -> tuple[list[str], list[Sequence[Cell]]]:
    if usage.by == "venue":
        headers = ["day (UTC+7)", "venue_id", "venue", "scans"]
        return headers, [(r.day.isoformat(), r.key, r.label, r.scans) for r in usage.rows]
    return ["day (UTC+7)", "district", "scans"], [
        (r.day.isoformat(), r.key, r.scans) for r in usage.rows
    ]


def _download(body: bytes, media_type: str, usage: UsageOut, ext: str) -> Response:
    name = f"doorscan-usage-{usage.by}-{usage.since.isoformat()}-{usage.until.isoformat()}.{ext}"
    return Response(
        body,
        media_type=media_type,
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/api/v1/exports/usage.csv",
    tags=["exports"],
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "UTF-8 CSV with BOM"}},
)
def api_usage_csv(
    user: CurrentUser,
    request: Request,
    by: By = "venue",
    since: SinceDay = None,
    until: UntilDay = None,
    venue_id: VenueFilter = None,
) -> Response:
    """The usage report as CSV; no cell can start a formula."""
    usage = _usage(request, user, since, until, by, venue_id)
    headers, rows = _export_rows(usage)
    return _download(to_csv(headers, rows), "text/csv; charset=utf-8", usage, "csv")


_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@router.get(
    "/api/v1/exports/usage.xlsx",
    tags=["exports"],
    response_class=Response,
    responses={200: {"content": {_XLSX: {}}, "description": "one worksheet"}},
)
def api_usage_xlsx(
    user: CurrentUser,
    request: Request,
    by: By = "venue",
    since: SinceDay = None,
    until: UntilDay = None,
    venue_id: VenueFilter = None,
) -> Response:
    """The usage report as XLSX; no cell can start a formula."""
    usage = _usage(request, user, since, until, by, venue_id)
    headers, rows = _export_rows(usage)
    return _download(to_xlsx(headers, rows, sheet="usage"), _XLSX, usage, "xlsx")


@router.get(
    "/metrics",
    tags=["metrics"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(user: CurrentUser, request: Request) -> Response:
    """Prometheus metrics: scans ingested, dead letters, acks, units online, lag, traces."""
    if user.role not in _METRICS_ROLES:
        raise Forbidden(f"the {user.role} role may not read the fleet's metrics")
    hub_metrics: HubMetrics | None = getattr(request.app.state, "metrics", None)
    if hub_metrics is None:
        # A web-only process ingests nothing: its counters are zero, units online is real.
        hub_metrics = HubMetrics()
        request.app.state.metrics = hub_metrics
    return Response(hub_metrics.render(access_for(request, user)), media_type=CONTENT_TYPE)
