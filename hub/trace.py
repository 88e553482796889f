"""Contact tracing: who was at the same venue as a person, within a time window.

The rule, exactly (the tests hold an independent brute-force version of it):

* only check-ins with ``since <= t <= until`` count;
* a *contact event* between two check-ins of different people is: same venue and
  ``|t1 - t2| <= window`` (inclusive); its time is ``max(t1, t2)``;
* degree 0 is the index person (F0), exposed since forever. A person not already
  found at degree <= k is at degree k+1 if they have a contact event with a degree-k
  person p whose time is >= p's exposure time; their exposure time is the earliest
  such event over all degree-k persons. So a meeting *before* p was exposed does not
  make an F2: p could not have passed on what p did not yet carry;
* `depth` limits the degrees reported (default 2: F1 and F2).

Ties between events of the same earliest time are broken by the smallest person key
of the degree-k person, then the smallest venue id, so a trace is reproducible.

The engine reads only through `CheckinReader`'s two indexed range queries: for each
check-in of a person just found it asks for the venue's check-ins in
``[t - window, t + window]`` clipped to the period; it never loads the whole table.
It walks check-ins with their identities still sealed, people told apart by pseudonym,
and opens one check-in per person it reports: the one that made them a contact, whose
ID number and name the contact then shows (as scanned at that venue). A person found at
the last degree asked is not expanded further, so their visits are not read at all.

    >>> params = TraceParams(person_key_from_id("064090123456"), since, until)  # doctest: +SKIP
    >>> [(c.degree, c.name) for c in trace(store, params).contacts]            # doctest: +SKIP

This module reads and audits nothing itself: every caller reaches it through
`hub.access.AccessControlledStore.trace`, which checks the role and the reason and
writes the audit entry (the traced person by the store's pseudonym, never by ID number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from doorscan.errors import Refusal
from doorscan.payloads import person_key_for_id
from doorscan.timefmt import format_rfc3339, from_ms, to_ms
from hub.store import CheckinReader, SealedCheckin

__all__ = [
    "DEFAULT_DEPTH",
    "DEFAULT_WINDOW",
    "MAX_DEPTH",
    "Contact",
    "IndexPerson",
    "TraceParams",
    "TraceResult",
    "Visit",
    "person_key_from_id",
    "trace",
]

DEFAULT_WINDOW = timedelta(minutes=60)
"""The national app's rule: same venue within one hour of the F0's check-in."""
DEFAULT_DEPTH = 2
MAX_DEPTH = 6
"""Past F6 a trace names most of a town, which helps nobody and exposes everybody."""

_PREFIXES = ("id:", "qid:", "card:")
_CARD_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{10}")  # doorscan.cards' Crockford base32 ids
_CITIZEN_ID = re.compile(r"\d{12}|\d{9}")  # CCCD or the old CMND
_DOCUMENT = re.compile(r"[0-9A-Z]{3,20}")  # passports and other documents on a health QR


def person_key_from_id(text: str) -> str:
    """Turn what a tracer types into a person key.

    >>> person_key_from_id("064090123456"), person_key_from_id("7K3M9P2QXA")
    ('id:064090123456', 'card:7K3M9P2QXA')

    12 or 9 digits, or a passport-like number, is a document (``id:``); 10 characters
    of the visitor-card alphabet are a card (``card:``); an explicit ``id:``, ``qid:``
    or ``card:`` prefix passes through, and is how to name a 10-character document.
    """
    value = text.strip()
    for prefix in _PREFIXES:
        if value.startswith(prefix) and value[len(prefix) :].strip():
            return prefix + value[len(prefix) :].strip()
    upper = value.upper()
    if _CITIZEN_ID.fullmatch(value):
        return person_key_for_id(value)
    if _CARD_ID.fullmatch(upper):
        return f"card:{upper}"
    if "*" in value:
        raise Refusal(
            "masked_id", "a masked number names nobody; use the health QR's qid:<QID> instead"
        )
    if _DOCUMENT.fullmatch(upper):
        return person_key_for_id(upper)
    raise Refusal(
        "bad_id",
        f"{value[:40]!r} is not a CCCD/CMND/passport number, a card id, "
        "or an id:, qid: or card: key",
    )


@dataclass(frozen=True)
class TraceParams:
    person_key: str
    since: datetime
    until: datetime
    window: timedelta = DEFAULT_WINDOW
    depth: int = DEFAULT_DEPTH
    id_text: str = ""

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise Refusal("naive_time", "since and until must carry a UTC offset")
        if self.since > self.until:
            raise Refusal("empty_period", "since is after until")
        if self.window < timedelta(0):
            raise Refusal("bad_window", "the window cannot be negative")
        if not 0 <= self.depth <= MAX_DEPTH:
            raise Refusal("bad_depth", f"depth must be 0..{MAX_DEPTH}, not {self.depth}")

    @property
    def window_ms(self) -> int:
        return self.window // timedelta(milliseconds=1)

    def _period(self) -> dict[str, Any]:
        minutes = self.window / timedelta(minutes=1)
        return {
            "since": format_rfc3339(self.since),
            "until": format_rfc3339(self.until),
            "window_minutes": int(minutes) if minutes.is_integer() else minutes,
            "depth": self.depth,
        }

    def to_json_dict(self) -> dict[str, Any]:
        """The parameters as the tracer sees them, in the clear."""
        return {
            "id": self.id_text or self.person_key,
            "person_key": self.person_key,
            **self._period(),
        }

    def to_audit_dict(self, subject: str) -> dict[str, Any]:
        """The parameters as the audit log keeps them: the person only as `subject`.

        `subject` is the store's pseudonym of the person key; whoever holds the vault
        can tell whether an ID was traced by blinding it, nobody else can.
        """
        return {"subject": subject, **self._period()}


@dataclass(frozen=True)
class Visit:
    venue_id: str
    at: datetime


@dataclass(frozen=True)
class IndexPerson:
    person_key: str
    id_number: str
    name: str | None  # None when the hub has never seen this person
    visits: list[Visit] = field(default_factory=list)


@dataclass(frozen=True)
class Contact:
    person_key: str
    id_number: str
    name: str
    degree: int
    exposed_at: datetime
    venue_id: str
    via: str  # id_number of the degree-1-lower person of the earliest event


@dataclass(frozen=True)
class TraceResult:
    index: IndexPerson
    contacts: list[Contact]
    params: TraceParams

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "index": {
                "person_key": self.index.person_key,
                "id_number": self.index.id_number,
                "name": self.index.name,
                "visits": [
                    {"venue_id": v.venue_id, "at": format_rfc3339(v.at)} for v in self.index.visits
                ],
            },
            "contacts": [
                {
                    "id_number": c.id_number,
                    "name": c.name,
                    "degree": c.degree,
                    "exposed_at": format_rfc3339(c.exposed_at),
                    "venue_id": c.venue_id,
                    "via": c.via,
                }
                for c in self.contacts
            ],
            "params": self.params.to_json_dict(),
        }


@dataclass(frozen=True)
class _Found:
    """A person found at some degree: who, since when exposed (None: always), their visits."""

    pseudonym: str
    person_key: str
    id_number: str
    exposed_ms: int | None
    checkins: list[tuple[str, int]]  # (venue_id, at_ms)


def trace(reader: CheckinReader, params: TraceParams) -> TraceResult:
    """Run the rule in the module docstring; no audit (`hub.access` writes it)."""
    since_ms, until_ms, window_ms = to_ms(params.since), to_ms(params.until), params.window_ms
    key = params.person_key
    known = reader.person(key)
    index_id = known[0] if known else key.split(":", 1)[-1]
    index_pseudonym = reader.pseudonym(key)
    index_checkins = [
        (c.venue_id, c.at_ms)
        for c in reader.sealed_checkins_of(index_pseudonym, since_ms, until_ms)
    ]
    index = IndexPerson(
        person_key=key,
        id_number=index_id,
        name=known[1] if known else None,
        visits=[Visit(venue, from_ms(at)) for venue, at in index_checkins],
    )
    degree_of: dict[str, int] = {index_pseudonym: 0}
    frontier = [_Found(index_pseudonym, key, index_id, None, index_checkins)]
    contacts: list[Contact] = []
    for degree in range(1, params.depth + 1):
        # pseudonym -> ((event time, via person key, venue id), the check-in that made it):
        # min() over the clear keys of the people found before gives the tie rule.
        best: dict[str, tuple[tuple[int, str, str], SealedCheckin]] = {}
        via_id: dict[str, str] = {}
        for p in frontier:
            via_id[p.person_key] = p.id_number
            for venue_id, t in p.checkins:
                lo, hi = max(t - window_ms, since_ms), min(t + window_ms, until_ms)
                if p.exposed_ms is not None:
                    if hi < p.exposed_ms:
                        continue  # every event here ends before p was exposed
                    if t < p.exposed_ms:
                        lo = max(lo, p.exposed_ms)  # max(t, t_q) >= exposure needs t_q >= it
                for other in reader.sealed_checkins_at(venue_id, lo, hi):
                    if other.pseudonym in degree_of:
                        continue
                    event = (max(t, other.at_ms), p.person_key, venue_id)
                    if other.pseudonym not in best or event < best[other.pseudonym][0]:
                        best[other.pseudonym] = (event, other)
        if not best:
            break
        expand = degree < params.depth  # the last degree's visits would never be read
        frontier = []
        for pseudonym, ((event_ms, via_key, venue_id), checkin) in best.items():
            degree_of[pseudonym] = degree
            who = reader.open_checkin(checkin)
            visits = reader.sealed_checkins_of(pseudonym, since_ms, until_ms) if expand else []
            frontier.append(
                _Found(
                    pseudonym,
                    who.person_key,
                    who.id_number,
                    event_ms,
                    [(c.venue_id, c.at_ms) for c in visits],
                )
            )
            contacts.append(
                Contact(
                    person_key=who.person_key,
                    id_number=who.id_number,
                    name=who.name,
                    degree=degree,
                    exposed_at=from_ms(event_ms),
                    venue_id=venue_id,
                    via=via_id[via_key],
                )
            )
        frontier.sort(key=lambda f: f.person_key)
    contacts.sort(key=lambda c: (c.degree, c.exposed_at, c.id_number, c.person_key))
    return TraceResult(index=index, contacts=contacts, params=params)
