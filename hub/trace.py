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

Ties between events of the same earliest time are broken by the smallest pseudonym
(`hub.vault.Vault.blind`) of the degree-k person, then the smallest venue id, so a
trace is reproducible; by pseudonym, because the walk never opens an identity to find
a contact.

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
comparison with every frontier check-in (`_sweep_venue`). A person found at the last
degree asked is not expanded further, so their visits are not read at all.

People are told apart by pseudonym all the way (`find`): the whole answer, and its
counts by degree, venue and hour (`TraceSummary`), cost no identity. Only the contacts
a tracer is shown are opened (`TracePage`: the first 100, then page by page; all of
them for an export): for each, the earliest check-in that made the earliest event,
whose ID number and name the contact then shows (as scanned at that venue), and the
check-in of the person they were exposed by (`via`). An F2 of 40 000 people is thus
counted in full and named 100 at a time.

    >>> params = TraceParams(person_key_from_id("064090123456"), since, until)  # doctest: +SKIP
    >>> with store.trace_reader() as reader:                                   # doctest: +SKIP
    ...     result = trace(reader, params, TracePage(1))
    ...     result.summary.by_degree, [(c.degree, c.name) for c in result.contacts]

This module audits nothing itself: every caller reaches it through
`hub.access.AccessControlledStore.trace`, which checks the role and the reason and
writes the audit entry (the traced person by the store's pseudonym, never by ID number;
the page, and how many identities it opened).
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple

from doorscan.errors import Refusal
from doorscan.payloads import person_key_for_id
from doorscan.timefmt import format_rfc3339, from_ms, to_ms
from hub.store import CheckinRef, TraceReader

__all__ = [
    "DEFAULT_DEPTH",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_WINDOW",
    "EXPORT_BATCH",
    "MAX_DEPTH",
    "MAX_PAGE_SIZE",
    "Contact",
    "Finding",
    "IndexPerson",
    "Reached",
    "TraceExport",
    "TracePage",
    "TraceParams",
    "TraceResult",
    "TraceSummary",
    "Visit",
    "find",
    "named_batches",
    "person_key_from_id",
    "trace",
]

DEFAULT_WINDOW = timedelta(minutes=60)
"""The national app's rule: same venue within one hour of the F0's check-in."""
DEFAULT_DEPTH = 2
MAX_DEPTH = 6
"""Past F6 a trace names most of a town, which helps nobody and exposes everybody."""
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_HOUR_MS = 3_600_000

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


class Reached(NamedTuple):
    """A contact as the walk finds it, before any identity is opened: who by pseudonym.

    A tuple, in the answer's order (degree, exposure, venue, then the shown check-in):
    an F2 makes tens of thousands, and tuples are made and sorted at C speed.
    """

    degree: int
    exposed_ms: int
    venue_id: str
    at_ms: int  # the check-in whose identity names them (see `_Event`) ...
    scan_id: str  # ... and its scan id
    pseudonym: str
    via: str  # the pseudonym of the degree-1-lower person of the earliest event

    @property
    def shown(self) -> CheckinRef:
        return (self.venue_id, self.at_ms, self.scan_id, self.pseudonym)


@dataclass(frozen=True)
class TracePage:
    """Which contacts of the answer are opened and named: `size` of them from page `number`."""

    number: int = 1
    size: int = DEFAULT_PAGE_SIZE

    def __post_init__(self) -> None:
        if self.number < 1:
            raise Refusal("bad_page", f"pages are numbered from 1, not {self.number}")
        if not 1 <= self.size <= MAX_PAGE_SIZE:
            raise Refusal("bad_page", f"a page holds 1..{MAX_PAGE_SIZE} contacts, not {self.size}")

    def of(self, reached: list[Reached]) -> list[Reached]:
        start = (self.number - 1) * self.size
        return reached[start : start + self.size]


@dataclass(frozen=True)
class TraceSummary:
    """How many contacts, by degree, by degree and venue, by degree and hour of exposure.

    Counted over the whole answer from pseudonyms alone: no identity is opened for it.
    Hours start on the hour (UTC hours are Vietnam's hours too: UTC+7 has no half hour).
    """

    by_degree: dict[int, int]
    by_venue: list[tuple[int, str, int]]  # (degree, venue id, people), most people first
    by_hour: list[tuple[int, int, int]]  # (degree, hour start ms, people), in time order

    @classmethod
    def of(cls, reached: list[Reached]) -> TraceSummary:
        degrees = Counter(map(itemgetter(0), reached))
        venues = Counter(map(itemgetter(0, 2), reached))
        hours = Counter((r[0], r[1] - r[1] % _HOUR_MS) for r in reached)
        return cls(
            by_degree=dict(sorted(degrees.items())),
            by_venue=sorted(
                ((d, v, n) for (d, v), n in venues.items()), key=lambda x: (x[0], -x[2], x[1])
            ),
            by_hour=sorted((d, h, n) for (d, h), n in hours.items()),
        )

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "by_degree": {str(d): n for d, n in self.by_degree.items()},
            "by_venue": [{"degree": d, "venue_id": v, "people": n} for d, v, n in self.by_venue],
            "by_hour": [
                {"degree": d, "hour": format_rfc3339(from_ms(h)), "people": n}
                for d, h, n in self.by_hour
            ],
        }


@dataclass(frozen=True)
class TraceResult:
    """A trace's answer: the whole summary, and the contacts of one page (or all of them)."""

    index: IndexPerson
    contacts: list[Contact]
    params: TraceParams
    summary: TraceSummary
    total: int  # contacts in the whole answer; `contacts` may be one page of them
    page: TracePage | None = None  # None: every contact

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
            "summary": self.summary.to_json_dict(),
            "total": self.total,
            "page": None
            if self.page is None
            else {"number": self.page.number, "size": self.page.size},
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
class Finding:
    """The walk's whole answer, no identity opened but the index person's (`find`)."""

    params: TraceParams
    index: IndexPerson
    index_pseudonym: str
    reached: list[Reached]  # in the answer's order: degree, exposure, venue, check-in

    def summary(self) -> TraceSummary:
        return TraceSummary.of(self.reached)

    def open(self, reader: TraceReader, chosen: list[Reached]) -> list[Contact]:
        """Name `chosen`: their shown check-ins and their vias' opened, in one read."""
        wanted = {r.via for r in chosen} - {self.index_pseudonym}
        by_pseudonym = {r.pseudonym: r for r in self.reached if r.pseudonym in wanted}
        opened = reader.open_checkins({r.shown for r in [*chosen, *by_pseudonym.values()]})
        contacts = []
        for r in chosen:
            who = opened.get(r.shown[2])
            if who is None:
                continue  # purged since the walk (`named_batches`); in one snapshot, never
            if r.via == self.index_pseudonym:
                via_id = self.index.id_number
            else:
                via = opened.get(by_pseudonym[r.via].shown[2])
                via_id = "" if via is None else via.id_number  # "" only when purged meanwhile
            contacts.append(
                Contact(
                    person_key=who.person_key,
                    id_number=who.id_number,
                    name=who.name,
                    degree=r.degree,
                    exposed_at=from_ms(r.exposed_ms),
                    venue_id=r.venue_id,
                    via=via_id,
                )
            )
        return contacts


class _Found(NamedTuple):
    """A person found at some degree: who (pseudonym), since when exposed (None: always), visits."""

    pseudonym: str
    exposed_ms: int | None
    checkins: list[tuple[str, int]]  # (venue_id, at_ms)


_Event = tuple[int, str, str, int, str]
"""(event ms, via pseudonym, venue id; the met person's check-in: at ms, scan id).

Tuples compare in that order, so min() is the tie rule, and then picks the earliest of
the met person's check-ins that make that event: the one whose identity is shown."""


def trace(reader: TraceReader, params: TraceParams, page: TracePage | None = None) -> TraceResult:
    """The rule in the module docstring on one snapshot: the summary, and `page` named.

    With no `page` every contact is named (an export, the CLI). No audit: `hub.access`
    writes it.
    """
    finding = find(reader, params)
    chosen = finding.reached if page is None else page.of(finding.reached)
    return TraceResult(
        index=finding.index,
        contacts=finding.open(reader, chosen),
        params=params,
        summary=finding.summary(),
        total=len(finding.reached),
        page=page,
    )


EXPORT_BATCH = 1000
"""Contacts named per read snapshot while an export is written."""


@dataclass(frozen=True)
class TraceExport:
    """A whole trace for a file: the walk's answer, and its contacts named batch by batch."""

    finding: Finding
    batches: Iterator[list[Contact]]


def named_batches(
    open_reader: Callable[[], AbstractContextManager[TraceReader]],
    finding: Finding,
    size: int | None = None,
) -> Iterator[list[Contact]]:
    """Every contact of `finding` in order, named `size` (`EXPORT_BATCH`) at a time, each in a read
    snapshot of its own (the store's read connection is free between batches).

    Stored scans never change, so a later snapshot opens the same identities; a scan
    the retention purge removed in between is left out, as it would be from a new trace.
    """
    step = size or EXPORT_BATCH
    for start in range(0, len(finding.reached), step):
        with open_reader() as reader:
            batch = finding.open(reader, finding.reached[start : start + step])
        yield batch  # the snapshot closed first: a slow reader of the file holds nothing


def find(reader: TraceReader, params: TraceParams) -> Finding:
    """Walk the degrees by pseudonym; open nobody's identity but the index person's."""
    since_ms, until_ms, window_ms = to_ms(params.since), to_ms(params.until), params.window_ms
    key = params.person_key
    known = reader.person(key)
    index_pseudonym = reader.pseudonym(key)
    # Same-time visits in scan-id order, as they were stored.
    mine = sorted(
        (at, scan_id, venue)
        for venue, at, scan_id, _ in reader.visits_of([index_pseudonym], since_ms, until_ms)
    )
    index = IndexPerson(
        person_key=key,
        id_number=known[0] if known else key.split(":", 1)[-1],
        name=known[1] if known else None,
        visits=[Visit(venue, from_ms(at)) for at, _, venue in mine],
    )
    degree_of: dict[str, int] = {index_pseudonym: 0}
    frontier = [_Found(index_pseudonym, None, [(venue, at) for at, _, venue in mine])]
    reached: list[Reached] = []
    for degree in range(1, params.depth + 1):
        best = _earliest_events(reader, frontier, degree_of, since_ms, until_ms, window_ms)
        if not best:
            break
        degree_of.update(dict.fromkeys(best, degree))
        reached += [
            Reached(degree, event_ms, venue_id, at, scan_id, q, via)
            for q, (event_ms, via, venue_id, at, scan_id) in best.items()
        ]
        if degree < params.depth:  # the last degree's visits would never be read
            visits: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for venue, at, _, q in reader.visits_of(best.keys(), since_ms, until_ms):
                visits[q].append((venue, at))
            frontier = [_Found(q, event[0], visits[q]) for q, event in best.items()]
    reached.sort()  # the tuples' own order: degree, exposure, venue, check-in
    return Finding(params, index, index_pseudonym, reached)


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
            met_at[venue_id].append((t, p.exposed_ms, p.pseudonym))
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
    via pseudonym) the frontier's. A row at `at` meets a check-in t with |t - at| <=
    window, and the event max(t, at) counts if it is >= the check-in's person's exposure:

    * a check-in at or before the row makes the event `at` itself, the earliest there
      can be. It counts for rows from max(t, exposure) to t + window: a heap of those
      open at `at`, by pseudonym, gives the tie rule's pick (stale ones are popped);
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
    open_now: list[tuple[str, int]] = []  # (via pseudonym, open until ms), a heap
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
