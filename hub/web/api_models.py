"""The response and request models of the hub's identity API (`hub.web.api`).

They are what the OpenAPI document shows each role: a venue owner's visitor list has
masked fields and no person key; times are UTC (RFC 3339).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from hub.access import Role
from hub.access.policy import MAX_REASON_CHARS
from hub.trace import DEFAULT_PAGE_SIZE, MAX_DEPTH, MAX_PAGE_SIZE

__all__ = [
    "UserOut",
    "LoginIn",
    "TokenOut",
    "VenueOut",
    "VisitOut",
    "IndexPersonOut",
    "ContactOut",
    "TraceIn",
    "TracePageIn",
    "TraceSummaryOut",
    "VenueCountOut",
    "HourCountOut",
    "PeriodIn",
    "TimelineIn",
    "SearchIn",
    "TraceOut",
    "VisitorOut",
    "VisitorListOut",
    "TimelineOut",
    "PersonMatchOut",
    "SearchOut",
    "AuditEntryOut",
    "AuditVerificationOut",
    "AuditOut",
]

MAX_WINDOW_MINUTES = 7 * 24 * 60
"""A week: the longest contact window a trace may ask for."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserOut(_Out):
    user_id: str
    display_name: str
    role: Role
    venue_id: str | None = Field(description="the venue role's own venue; null for others")


class LoginIn(_Out):
    user_id: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(_Out):
    token: str = Field(description="shown once; send it as `Authorization: Bearer <token>`")
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the scheme's name)
    expires_at: datetime
    user: UserOut


class VenueOut(_Out):
    venue_id: str
    name: str
    address: str
    district: str


class VisitOut(_Out):
    venue_id: str
    venue_name: str | None
    at: datetime


class IndexPersonOut(_Out):
    person_key: str = Field(description="id:<number>, qid:<QID> or card:<card id>")
    id_number: str
    name: str | None = Field(description="null when the hub has never seen this person")
    visits: list[VisitOut]


class ContactOut(_Out):
    person_key: str
    id_number: str
    name: str
    degree: int = Field(description="1 for F1, 2 for F2, ...")
    exposed_at: datetime
    venue_id: str
    venue_name: str | None
    via: str = Field(description="id number of the person of one degree lower they met")


_REASON = Field(
    min_length=1,
    max_length=MAX_REASON_CHARS,
    description="why identities are read (e.g. the case); kept encrypted in the audit log",
)


class PeriodIn(_Out):
    """A period and a reason: a visitor list's request (in the body, never the URL)."""

    since: AwareDatetime = Field(description="start of the period (with UTC offset)")
    until: AwareDatetime = Field(description="end of the period (with UTC offset)")
    reason: str = _REASON


class TimelineIn(PeriodIn):
    id: str = Field(min_length=1, max_length=64, description="CCCD/CMND/passport or card id")


class SearchIn(_Out):
    name: str = Field(min_length=1, max_length=200, description="diacritics optional")
    reason: str = _REASON


class TraceIn(TimelineIn):
    """A trace's question: an export of it names every contact."""

    window_minutes: float = Field(60, ge=0, le=MAX_WINDOW_MINUTES)
    depth: int = Field(2, ge=0, le=MAX_DEPTH)


class TracePageIn(TraceIn):
    """A trace's question and which page of named contacts to answer with."""

    page: int = Field(1, ge=1, description="1 is the first page")
    page_size: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


class VenueCountOut(_Out):
    degree: int
    venue_id: str
    venue_name: str | None
    people: int = Field(description="contacts of this degree whose earliest event was here")


class HourCountOut(_Out):
    degree: int
    hour: datetime = Field(description="start of the hour (UTC) of their exposure")
    people: int


class TraceSummaryOut(_Out):
    """The whole answer counted; no identity is opened to count it."""

    by_degree: dict[str, int] = Field(description='contacts per degree: {"1": F1s, "2": F2s}')
    by_venue: list[VenueCountOut] = Field(description="most people first, per degree")
    by_hour: list[HourCountOut] = Field(description="in time order, per degree")


class TraceOut(_Out):
    index: IndexPersonOut
    summary: TraceSummaryOut
    total: int = Field(description="contacts in the whole answer (`contacts` is one page)")
    page: int
    page_size: int
    contacts: list[ContactOut] = Field(
        description="this page's contacts, by degree, then time of exposure, then venue"
    )
    since: datetime
    until: datetime
    window_minutes: float
    depth: int


class VisitorOut(_Out):
    at: datetime
    kind: str
    id_number: str = Field(description="masked (2666) for the venue role")
    name: str = Field(description="masked (2666) for the venue role")


class VisitorListOut(_Out):
    venue_id: str
    since: datetime
    until: datetime
    masked: bool
    visitors: list[VisitorOut]


class TimelineOut(_Out):
    person_key: str
    id_number: str
    name: str | None
    since: datetime
    until: datetime
    visits: list[VisitOut]


class PersonMatchOut(_Out):
    person_key: str
    id_number: str
    name: str


class SearchOut(_Out):
    matches: list[PersonMatchOut]


class AuditEntryOut(_Out):
    id: int
    at: datetime
    action: str
    reason: str
    params: dict[str, Any]
    prev_hash: str
    hash: str


class AuditVerificationOut(_Out):
    ok: bool
    entries: int
    first_bad_id: int | None
    problem: str | None
    head_hash: str


class AuditOut(_Out):
    entries: list[AuditEntryOut]
    verification: AuditVerificationOut


# -- helpers ---------------------------------------------------------------------------------
