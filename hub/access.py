"""Who may read what from the hub: roles, masking, and the checked reader every caller uses.

The hub holds names and ID numbers. MoH decision 2666/QĐ-BYT says venue owners see
masked data only (its examples: "Họ tên đệm***", "0123456***") and the full data is
for the authorities. So reads of identities go through `AccessControlledStore`, never
through the raw store: the CLI today, the HTTP API tomorrow, each builds a `Principal`
and asks this layer, which refuses (`Forbidden`), masks, and writes the audit entry.

    >>> reader = AccessControlledStore(store, Principal(Role.VENUE, "cho-pleiku"))  # doctest: +SKIP
    >>> listing = reader.visitors("cho-pleiku", since, until, "kiểm tra", at=now)   # doctest: +SKIP
    >>> listing.visitors[0].name, listing.visitors[0].id_number                    # doctest: +SKIP
    ('Nguyễn Văn***', '0640901*****')

Roles:

* ``tracer`` (the health service): traces and visitor lists of every venue, in full.
* ``venue`` (a venue owner): the visitor list of its own venue only, masked; no trace,
  because a trace names people met at other venues.
* ``reporter`` (the information service's usage reports): counts only.
* ``admin`` (operators of units and venues): counts, the venue registry and the audit
  log (which names people by pseudonym only), no identity.

A person's timeline and the search by name are the tracer's too: both name a person
and where they went, across venues.

What is not promised: a role given on the command line is a claim, not a proof. Whoever
can open ``hub.db`` can read everything; the roles become a boundary once the principal
comes from an authenticated request. A request refused for its role reads
nothing and leaves an audit entry ``refused`` (who, what, why; a person by pseudonym
only); a request refused as malformed (no reason, an empty period) leaves none.
"""

from __future__ import annotations

import argparse
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from doorscan.errors import DoorscanError, Refusal
from doorscan.timefmt import format_rfc3339, from_ms, to_ms
from doorscan.wire import VenueRecord
from hub.audit import AuditVerification
from hub.namefold import fold
from hub.store import AuditEntry, Store
from hub.trace import TraceResult, person_key_from_id, run_trace

__all__ = [
    "AccessControlledStore",
    "AuditLogView",
    "Forbidden",
    "NameSearch",
    "PersonMatch",
    "Principal",
    "PrincipalError",
    "Role",
    "Timeline",
    "TimelineVisit",
    "Visitor",
    "VisitorList",
    "add_role_options",
    "mask_id_number",
    "mask_name",
    "principal_from_args",
]

NAME_MASK = "***"
ID_KEPT_CHARS = 7
"""2666's example "0123456***" keeps 7 characters."""
ID_MIN_MASKED = 3
"""A short document number (a passport, a CMND) still loses at least its last 3 characters."""


class Forbidden(DoorscanError, PermissionError):
    """The principal's role may not read this; nothing was read."""


class PrincipalError(DoorscanError, ValueError):
    """A role and venue id that do not go together (a venue without its id, or the reverse)."""


class Role(StrEnum):
    TRACER = "tracer"
    VENUE = "venue"
    REPORTER = "reporter"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who asks: a role, and for the venue role the one venue it owns."""

    role: Role
    venue_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise PrincipalError(f"unknown role {self.role!r}")
        if self.role is Role.VENUE and not (self.venue_id and self.venue_id.strip()):
            raise PrincipalError("the venue role needs the venue's id")
        if self.role is not Role.VENUE and self.venue_id is not None:
            raise PrincipalError(f"the {self.role} role reads no single venue; give no venue id")

    def to_audit(self) -> dict[str, Any]:
        return {"role": str(self.role), "venue_id": self.venue_id}

    def __str__(self) -> str:
        return f"{self.role} {self.venue_id}" if self.venue_id else str(self.role)


def mask_name(name: str) -> str:
    """A name as 2666 lets a venue see it: family and middle names, the given name masked.

    >>> mask_name("Nguyễn Văn An"), mask_name("Rơ Châm H'Hen"), mask_name("Ksor")
    ('Nguyễn Văn***', 'Rơ Châm***', 'K***')

    The given name is the last word (Vietnamese order: family, middle, given), so an
    apostrophe inside it (H'Hen) belongs to what is masked. A one-word name keeps its
    first letter with its accents. Text is NFC-normalised first, so a name stored
    decomposed (NFD) is cut at the same place and comes out composed.
    """
    words = unicodedata.normalize("NFC", name).split()
    if not words:
        return NAME_MASK
    if len(words) > 1:
        return " ".join(words[:-1]) + NAME_MASK
    word = words[0]
    end = 1
    while end < len(word) and unicodedata.combining(word[end]):
        end += 1  # a letter with a mark NFC has no single code point for stays whole
    return word[:end] + NAME_MASK


def mask_id_number(id_number: str) -> str:
    """An ID number as 2666 lets a venue see it: the first 7 characters, then ``*``.

    >>> mask_id_number("001090123456"), mask_id_number("******123456")
    ('0010901*****', '******1*****')

    The length is kept. A number of 10 characters or fewer keeps fewer, so that at least
    its last 3 are masked (a 9-digit CMND shows 6, an 8-character passport 5).
    """
    text = unicodedata.normalize("NFC", id_number.strip())
    kept = max(0, min(ID_KEPT_CHARS, len(text) - ID_MIN_MASKED))
    return text[:kept] + "*" * (len(text) - kept)


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


@runtime_checkable
class NameSearch(Protocol):
    """A store that can find people by folded name (``scans.name_key``, schema 7)."""

    def person_keys_by_name(self, folded: str) -> list[str]: ...


def _clean_reason(reason: str, what: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise Refusal("no_reason", f"{what} reads identities: give the reason (e.g. the case)")
    return reason


class AccessControlledStore:
    """The reads a `Principal` may make, checked, masked and audited.

    It does not own `store`: whoever opened the store closes it.
    """

    def __init__(self, store: Store, principal: Principal) -> None:
        self._store = store
        self.principal = principal

    def _audit(self, action: str, reason: str, params: dict[str, Any], at: datetime) -> None:
        self._store.record_audit(
            action, reason, {**params, "principal": self.principal.to_audit()}, at
        )

    def _refuse(self, action: str, why: str, reason: str, at: datetime, **params: Any) -> Forbidden:
        """Write the refused request to the audit log, then return the error to raise.

        A role asking for what it may not have is worth a record (a venue owner probing
        other venues, an admin trying a trace); the entry names no identity: a traced
        person appears by pseudonym only, like in a trace's own entry.
        """
        self._audit(
            "refused",
            " ".join(reason.split()) or "(no reason given)",
            {"attempted": action, "why": why, **params},
            at,
        )
        return Forbidden(why)

    # -- no identity: every role ----------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Totals (scans, people, venues, units, dead letters): every role may see them."""
        return self._store.counts()

    def venues(self) -> list[VenueRecord]:
        """The venue registry; a venue owner sees its own entry only."""
        venues = self._store.venues()
        if self.principal.role is Role.VENUE:
            return [v for v in venues if v.venue_id == self.principal.venue_id]
        return venues

    # -- identities -------------------------------------------------------------------------

    def visitors(
        self, venue_id: str, since: datetime, until: datetime, reason: str, at: datetime
    ) -> VisitorList:
        """Who checked in at `venue_id` with since <= time <= until, oldest first.

        Tracer: in full. Venue: its own venue only, names and numbers masked.
        Reporter and admin: `Forbidden`. The role is checked before the venue is looked
        up, so a venue owner cannot learn which other venue ids exist.
        """
        role = self.principal.role
        if role not in (Role.TRACER, Role.VENUE):
            why = f"the {role} role sees counts only, not who visited a venue"
            raise self._refuse("visitors", why, reason, at, venue_id=venue_id)
        if role is Role.VENUE and venue_id != self.principal.venue_id:
            why = (
                f"a venue owner sees its own venue only ({self.principal.venue_id}), not {venue_id}"
            )
            raise self._refuse("visitors", why, reason, at, venue_id=venue_id)
        reason = _clean_reason(reason, "a visitor list")
        if since > until:
            raise Refusal("empty_period", "since is after until")
        if self._store.venue(venue_id) is None:
            raise Refusal("unknown_venue", f"unknown venue {venue_id!r}")
        masked = role is Role.VENUE
        params = {
            "venue_id": venue_id,
            "since": format_rfc3339(since),
            "until": format_rfc3339(until),
            "masked": masked,
        }
        self._audit("visitors", reason, params, at)
        checkins = self._store.checkins_at(venue_id, to_ms(since), to_ms(until))
        visitors = [
            Visitor(c.at_ms, c.kind, mask_id_number(c.id_number), mask_name(c.name))
            if masked
            else Visitor(c.at_ms, c.kind, c.id_number, c.name)
            for c in checkins
        ]
        return VisitorList(venue_id, since, until, visitors, masked)

    def trace(
        self,
        id_text: str,
        since: datetime,
        until: datetime,
        window: timedelta,
        depth: int,
        reason: str,
        at: datetime,
    ) -> TraceResult:
        """Contacts of a person (`hub.trace`), for the tracer role only.

        A venue may not trace: a trace follows people to other venues. The request is
        checked and audited by `hub.trace.run_trace`, with the principal in the entry.
        """
        if self.principal.role is not Role.TRACER:
            why = (
                f"the {self.principal.role} role may not trace; only the health service "
                "(role tracer) may"
            )
            try:
                subject = self._store.pseudonym(person_key_from_id(id_text))
            except Refusal:
                subject = None  # not even a well-formed number: nothing to name
            raise self._refuse("trace", why, reason, at, subject=subject)
        return run_trace(
            self._store,
            id_text,
            since,
            until,
            window,
            depth,
            reason,
            at,
            audit_extra={"principal": self.principal.to_audit()},
        )

    def timeline(
        self, id_text: str, since: datetime, until: datetime, reason: str, at: datetime
    ) -> Timeline:
        """The person's own check-ins with since <= time <= until, with venue names.

        Tracer only: a timeline follows one person across venues, like a trace. The
        audit entry names the person by pseudonym only.
        """
        if self.principal.role is not Role.TRACER:
            why = f"the {self.principal.role} role may not read a person's timeline"
            raise self._refuse("timeline", why, reason, at, subject=self._subject_or_none(id_text))
        reason = _clean_reason(reason, "a timeline")
        person_key = person_key_from_id(id_text)
        if since.tzinfo is None or until.tzinfo is None:
            raise Refusal("naive_time", "since and until must carry a UTC offset")
        if since > until:
            raise Refusal("empty_period", "since is after until")
        params = {
            "subject": self._store.pseudonym(person_key),
            "since": format_rfc3339(since),
            "until": format_rfc3339(until),
        }
        self._audit("timeline", reason, params, at)
        names = {v.venue_id: v.name for v in self._store.venues()}
        known = self._store.person(person_key)
        visits = [
            TimelineVisit(c.venue_id, names.get(c.venue_id), from_ms(c.at_ms))
            for c in self._store.checkins_of(person_key, to_ms(since), to_ms(until))
        ]
        id_number = known[0] if known else person_key.split(":", 1)[-1]
        return Timeline(person_key, id_number, known[1] if known else None, since, until, visits)

    def find_people(self, name: str, reason: str, at: datetime) -> list[PersonMatch]:
        """Everyone scanned under `name`, diacritics and case ignored; tracer only.

        The audit entry names the searched name by its keyed pseudonym (the same keyed
        hash as ``scans.name_key``), never in the clear: the audit log is read by admins.
        """
        folded = fold(name)
        name_subject = self._store.pseudonym("name:" + folded) if folded else None
        if self.principal.role is not Role.TRACER:
            why = f"the {self.principal.role} role may not search people by name"
            raise self._refuse("find_people", why, reason, at, name_subject=name_subject)
        reason = _clean_reason(reason, "a search by name")
        if not folded:
            raise Refusal("no_name", "give a name to search for")
        if not isinstance(self._store, NameSearch):
            raise Refusal("no_name_index", "this store cannot search by name")
        self._audit("find_people", reason, {"name_subject": name_subject}, at)
        matches = []
        for person_key in self._store.person_keys_by_name(folded):
            known = self._store.person(person_key)
            if known is not None:
                matches.append(PersonMatch(person_key, known[0], known[1]))
        return sorted(matches, key=lambda m: (m.name, m.id_number, m.person_key))

    def audit_log(self, limit: int, at: datetime) -> AuditLogView:
        """The newest `limit` audit entries and the chain's check; admin only.

        Entries name people by pseudonym only; a refused attempt is itself audited.
        """
        if self.principal.role is not Role.ADMIN:
            why = f"the {self.principal.role} role may not read the audit log; admins may"
            raise self._refuse("audit_log", why, "", at)
        return AuditLogView(self._store.audit_entries(limit), self._store.verify_audit())

    def _subject_or_none(self, id_text: str) -> str | None:
        try:
            return self._store.pseudonym(person_key_from_id(id_text))
        except Refusal:
            return None  # not even a well-formed number: nothing to name


# -- command-line options (kept here so every command builds principals the same way) ------


def add_role_options(parser: argparse.ArgumentParser) -> None:
    """``--role`` (default tracer) and ``--as-venue``, for commands that read identities."""
    parser.add_argument(
        "--role",
        choices=[str(r) for r in Role],
        default=str(Role.TRACER),
        help="who asks: tracer (health service, full data; the default), venue (own venue, "
        "masked as MoH decision 2666/QĐ-BYT says), reporter or admin (no identities)",
    )
    parser.add_argument(
        "--as-venue", metavar="VENUE_ID", help="the venue id of the venue role (only with it)"
    )


def principal_from_args(args: argparse.Namespace) -> Principal:
    """The principal named by `add_role_options`; `PrincipalError` if they do not fit."""
    return Principal(Role(args.role), args.as_venue)
