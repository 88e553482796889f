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

The engine reads only through a `TraceReader` (`CheckinReader.trace_reader`): one read
snapshot of the store, so a trace is an answer about one state of the database however
many scans arrive while it runs. For each degree it takes every check-in t of the people
found at the degree before, and its window ``[t - window, t + window]`` clipped to the
period (and to the person's exposure, when the check-in came before it), merges the
windows per venue, and reads the check-ins inside them in one go from a narrow covering
index (venue, time, scan id, pseudonym: `hub.store.common_trace`); it never loads the
whole table and never reads a sealed identity to find a contact. Each venue's check-ins
are then swept in time order against that venue's frontier check-ins, held sorted, so a
person's earliest event costs a bisection and a heap step per check-in read, not a
comparison with every frontier check-in (`_sweep_venue`). People are told apart by
pseudonym; the engine opens one check-in per person it reports, all of a degree in one
read: the earliest check-in that made the earliest event, whose ID number and name the
contact then shows (as scanned at that venue). A person found at the last degree asked
is not expanded further, so their visits are not read at all.

    >>> params = TraceParams(person_key_from_id("064090123456"), since, until)  # doctest: +SKIP
    >>> with store.trace_reader() as reader:                                   # doctest: +SKIP
    ...     [(c.degree, c.name) for c in trace(reader, params).contacts]

This module reads and audits nothing itself: every caller reaches it through
`hub.access.AccessControlledStore.trace`, which checks the role and the reason and
writes the audit entry (the traced person by the store's pseudonym, never by ID number).
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from doorscan.errors import Refusal
from doorscan.payloads import person_key_for_id
from doorscan.timefmt import format_rfc3339, from_ms, to_ms
from hub.store import CheckinRef, TraceReader

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

    person_key: str
    id_number: str
    exposed_ms: int | None
    checkins: list[tuple[str, int]]  # (venue_id, at_ms)


_Event = tuple[int, str, str, int, str]
"""(event ms, via person key, venue id; the met person's check-in: at ms, scan id).

Tuples compare in that order, so min() is the tie rule, and then picks the earliest of
the met person's check-ins that make that event: the one whose identity is shown."""


def trace(reader: TraceReader, params: TraceParams) -> TraceResult:
    """Run the rule in the module docstring on one snapshot; no audit (`hub.access` writes it)."""
    since_ms, until_ms, window_ms = to_ms(params.since), to_ms(params.until), params.window_ms
    key = params.person_key
    known = reader.person(key)
    index_id = known[0] if known else key.split(":", 1)[-1]
    index_pseudonym = reader.pseudonym(key)
    # Same-time visits in scan-id order, as they were stored.
    mine = sorted(
        (at, scan_id, venue)
        for venue, at, scan_id, _ in reader.visits_of([index_pseudonym], since_ms, until_ms)
    )
    index = IndexPerson(
        person_key=key,
        id_number=index_id,
        name=known[1] if known else None,
        visits=[Visit(venue, from_ms(at)) for at, _, venue in mine],
    )
    degree_of: dict[str, int] = {index_pseudonym: 0}
    frontier = [_Found(key, index_id, None, [(venue, at) for at, _, venue in mine])]
    contacts: list[Contact] = []
    for degree in range(1, params.depth + 1):
        best = _earliest_events(reader, frontier, degree_of, since_ms, until_ms, window_ms)
        if not best:
            break
        degree_of.update(dict.fromkeys(best, degree))
        opened = reader.open_checkins(
            [(venue, at, scan_id, q) for q, (_, _, venue, at, scan_id) in best.items()]
        )
        visits: dict[str, list[tuple[str, int]]] = defaultdict(list)
        if degree < params.depth:  # the last degree's visits would never be read
            for venue, at, _, q in reader.visits_of(best.keys(), since_ms, until_ms):
                visits[q].append((venue, at))
        via_id = {p.person_key: p.id_number for p in frontier}
        frontier = []
        for q, (event_ms, via_key, venue_id, _, scan_id) in best.items():
            who = opened[scan_id]
            frontier.append(_Found(who.person_key, who.id_number, event_ms, visits[q]))
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
    contacts.sort(key=lambda c: (c.degree, c.exposed_at, c.id_number, c.person_key))
    return TraceResult(index=index, contacts=contacts, params=params)


def _earliest_events(
    reader: TraceReader,
    frontier: list[_Found],
    found: Mapping[str, int],
    since_ms: int,
    until_ms: int,
    window_ms: int,
) -> dict[str, _Event]:
    """Each person not yet `found` who has a contact event with the frontier: the earliest.

    One read for the whole degree: the windows of every frontier check-in, merged per
    venue. Then each venue on its own (`_sweep_venue`).
    """
    met_at: dict[str, list[tuple[int, int | None, str]]] = defaultdict(list)
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p in frontier:
        for venue_id, t in p.checkins:
            lo, hi = max(t - window_ms, since_ms), min(t + window_ms, until_ms)
            if p.exposed_ms is not None:
                if hi < p.exposed_ms:
                    continue  # every event here ends before p was exposed
                if t < p.exposed_ms:
                    lo = max(lo, p.exposed_ms)  # max(t, t_q) >= exposure needs t_q >= it
            spans[venue_id].append((lo, hi))
            met_at[venue_id].append((t, p.exposed_ms, p.person_key))
    windows = {venue_id: _merged(intervals) for venue_id, intervals in spans.items()}
    rows_at: dict[str, list[CheckinRef]] = defaultdict(list)
    for row in reader.checkins_in_windows(windows):
        if row[3] not in found:
            rows_at[row[0]].append(row)
    best: dict[str, _Event] = {}
    for venue_id, rows in rows_at.items():
        _sweep_venue(venue_id, rows, met_at[venue_id], window_ms, best)
    return best


def _merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of closed integer intervals, as disjoint ones in order."""
    intervals.sort()
    merged = [intervals[0]]
    for lo, hi in intervals[1:]:
        last_lo, last_hi = merged[-1]
        if lo <= last_hi + 1:
            merged[-1] = (last_lo, max(last_hi, hi))
        else:
            merged.append((lo, hi))
    return merged


def _sweep_venue(
    venue_id: str,
    rows: list[CheckinRef],
    checkins: list[tuple[int, int | None, str]],
    window_ms: int,
    best: dict[str, _Event],
) -> None:
    """Find each row's earliest event with the frontier's `checkins` here; keep it in `best`.

    `rows` are the venue's check-ins of people not yet found, `checkins` (t, exposed,
    via person key) the frontier's. A row at `at` meets a check-in t with |t - at| <=
    window, and the event max(t, at) counts if it is >= the check-in's person's exposure:

    * a check-in at or before the row makes the event `at` itself, the earliest there
      can be. It counts for rows from max(t, exposure) to t + window: a heap of those
      open at `at`, by person key, gives the tie rule's pick (stale ones are popped);
    * otherwise the earliest check-in after the row, if within the window and made
      when its person was already exposed (t >= exposure), found by bisection.

    Rows in time order, so O((rows + check-ins) log check-ins), not rows x check-ins.
    """
    rows.sort()  # one venue: by time, then scan id
    opening = sorted(
        (t if exposed is None else max(t, exposed), via, t + window_ms)
        for t, exposed, via in checkins
    )
    later = sorted((t, via) for t, exposed, via in checkins if exposed is None or t >= exposed)
    later_times = [t for t, _ in later]
    open_now: list[tuple[str, int]] = []  # (via person key, open until ms), a heap
    push, pop, after = heapq.heappush, heapq.heappop, bisect.bisect_right
    i, opened = 0, len(opening)
    for _, at, scan_id, q in rows:
        known = best.get(q)
        if known is not None and known[0] < at:
            continue  # this row's events are all at or after `at`: none is earlier
        while i < opened and opening[i][0] <= at:
            start, via, until = opening[i]
            if start <= until:
                push(open_now, (via, until))
            i += 1
        while open_now and open_now[0][1] < at:
            pop(open_now)
        if open_now:
            event_ms, via = at, open_now[0][0]
        else:
            j = after(later_times, at)
            if j == len(later) or later_times[j] > at + window_ms:
                continue
            event_ms, via = later[j]
        event = (event_ms, via, venue_id, at, scan_id)
        if known is None or event < known:
            best[q] = event
