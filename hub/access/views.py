"""What the access layer hands back: visitor lists, timelines, matches, audit views.

Plain frozen records, so the web and CLI layers render them without touching a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from hub.audit import AuditVerification
from hub.store import AuditEntry, DeadLetter, HeldScan, StoredUnitStatus

__all__ = [
    "TraceQuestion",
    "AccountView",
    "AuditLogView",
    "TokenView",
    "DeadLetter",
    "HeldScan",
    "NameSearch",
    "PersonMatch",
    "Timeline",
    "TimelineVisit",
    "UnitStatusRow",
    "Visitor",
    "VisitorList",
]


@dataclass(frozen=True)
class TraceQuestion:
    """What a tracer asks: whose contacts (as typed: a number, a card id, a key), over
    which period, within which window, to which degree. Checked by the access layer."""

    id_text: str
    since: datetime
    until: datetime
    window: timedelta
    depth: int


@dataclass(frozen=True)
class Visitor:
    """One check-in in a visitor list; no person key, which would carry the full number."""

    at_ms: int
    kind: str
    id_number: str
    name: str


@dataclass(frozen=True)
class VisitorList:
    venue_id: str
    since: datetime
    until: datetime
    visitors: list[Visitor]
    masked: bool


@dataclass(frozen=True)
class TimelineVisit:
    venue_id: str
    venue_name: str | None  # None for a venue no longer in the registry
    at: datetime


@dataclass(frozen=True)
class Timeline:
    """One person's own check-ins in a period, oldest first (the tracer's view)."""

    person_key: str
    id_number: str
    name: str | None  # None when the hub has never seen this person
    since: datetime
    until: datetime
    visits: list[TimelineVisit]


@dataclass(frozen=True)
class PersonMatch:
    """Someone whose scanned name folds to the searched one (`hub.namefold`)."""

    person_key: str
    id_number: str
    name: str


@dataclass(frozen=True)
class AuditLogView:
    """The newest audit entries and the check of the whole chain (the admin's view)."""

    entries: list[AuditEntry]
    verification: AuditVerification


@dataclass(frozen=True)
class TokenView:
    """One of an account's tokens as an admin sees it: its hash (never the token)."""

    token_hash: str
    kind: str
    created_at: datetime
    expires_at: datetime
    revoked: bool
    live: bool  # neither revoked nor expired


@dataclass(frozen=True)
class AccountView:
    """An operator account as an admin sees it: no password hash."""

    user_id: str
    display_name: str
    role: str
    venue_id: str | None
    active: bool
    locked: bool  # too many failed logins in the throttle's window
    tokens: list[TokenView]


UnitStatusRow = StoredUnitStatus
"""A unit's latest status as the hub stored it (its JSON as received)."""


@runtime_checkable
class NameSearch(Protocol):
    """A store that can find people by folded name (``scans.name_key``, schema 7)."""

    def person_keys_by_name(self, folded: str) -> list[str]: ...
