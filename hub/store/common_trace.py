"""The trace's reads: `SqlTrace.trace_reader`, one read snapshot over narrow covering indexes.

The trace engine (`hub.trace`) asks, for each degree, for every check-in at each venue
inside a set of time windows, and for every check-in of the people it has just found.
Both are answered from the index alone: ``scans_by_venue_covering`` (venue, time,
scan id, pseudonym) and ``scans_by_person_covering`` (pseudonym, time, scan id,
venue), SQLite's schema 11 and PostgreSQL's migration 5. A scan row carries its sealed
identity (some 300 bytes); it is read only for the check-ins the trace reports
(`open_checkins`), found by the venue index's full key (venue, time, scan id).

    >>> with store.trace_reader() as reader:                                   # doctest: +SKIP
    ...     seen = reader.checkins_in_windows({"cho-pleiku": [(start_ms, end_ms)]})
    ...     named = reader.open_checkins(seen[:20])

One trace, one snapshot (`_read_apart()`: SQLite's ``BEGIN``, PostgreSQL's ``REPEATABLE
READ, READ ONLY``): the F2 found from the F1 are found in the same database state the F1
came from, however many scans arrive meanwhile. It runs on the store's read connection,
apart from the one ingest writes on, so a hub that serves the dashboard and ingests in
one process (``serve --http``) keeps storing scans while a trace runs.

How many windows go in one statement is where the backends part (`TraceSql`):

- SQLite (`LIST_SQL`): a ``VALUES`` list of windows joined to ``scans``; SQLite walks
  the list and searches the covering index once per window. Up to
  `WINDOWS_PER_STATEMENT` windows, pseudonyms or scan ids per statement.
- PostgreSQL (`ARRAY_SQL`): one statement per read, arrays unnested and joined
  ``LATERAL`` with ``OFFSET 0``. Given the same ``VALUES`` list of 1 000 windows its
  planner chose a hash join over a parallel sequential scan of every day (800 ms where
  the nested loop takes 100 ms, on a 500 000-scan set); a ``LATERAL`` subquery that
  cannot be flattened can only be a nested loop of Index Only Scans, pruned at run
  time to each window's days. JIT is off in the snapshot: the plan's cost grows with
  the windows, crossed ``jit_above_cost`` and compiling took 45 to 75 ms of a 100 ms
  statement.

The mixin uses the store's `_read_apart()`, `pseudonym()` and `_checkin()` (the identity
opened and checked to be its row's); the SQL has ``?`` placeholders (`hub.store.common`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from hub.store.base import Checkin, CheckinRef, TraceReader
from hub.store.common import SqlConnection

__all__ = [
    "ARRAY_SQL",
    "LATEST_OF_SQL",
    "LIST_SQL",
    "WINDOWS_PER_STATEMENT",
    "SqlTrace",
    "TraceSql",
]

WINDOWS_PER_STATEMENT = 1000
"""At most 3 000 parameters a statement, far below SQLite's limit (32 766)."""

_REF_COLUMNS = "venue_id, scanned_at_ms, scan_id, person_key"  # a `CheckinRef`, in order
_OPENED_COLUMNS = "scan_id, venue_id, scanned_at_ms, identity"  # what `_checkin` takes

LATEST_OF_SQL = (
    f"SELECT {_OPENED_COLUMNS} FROM scans WHERE person_key = ? "  # noqa: S608
    "ORDER BY scanned_at_ms DESC, scan_id DESC LIMIT 1"
)
"""The person's latest scan (its identity is the name a trace shows); the pseudonym."""

Statement = tuple[str, Sequence[Any]]


class TraceSql:
    """How a backend asks for the trace's three reads, as statements with their parameters.

    This one is the shared SQL that SQLite runs (`LIST_SQL`): ``VALUES`` and ``IN``
    lists, cut into statements of `WINDOWS_PER_STATEMENT` items.
    """

    setup: tuple[str, ...] = ()
    """Statements run first in the snapshot."""

    def windows(self, windows: Sequence[tuple[str, int, int]]) -> Iterator[Statement]:
        for chunk in _chunks(windows):
            values = ", ".join("(?, ?, ?)" for _ in chunk)
            yield (
                f"WITH w (venue_id, lo, hi) AS (VALUES {values}) "  # noqa: S608
                f"SELECT s.venue_id, s.scanned_at_ms, s.scan_id, s.person_key FROM w "
                "JOIN scans s ON s.venue_id = w.venue_id "
                "AND s.scanned_at_ms BETWEEN w.lo AND w.hi",
                [value for window in chunk for value in window],
            )

    def visits(
        self, pseudonyms: Sequence[str], since_ms: int, until_ms: int
    ) -> Iterator[Statement]:
        for chunk in _chunks(pseudonyms):
            marks = ", ".join("?" for _ in chunk)
            yield (
                f"SELECT {_REF_COLUMNS} FROM scans WHERE person_key IN ({marks}) "  # noqa: S608
                "AND scanned_at_ms BETWEEN ? AND ?",
                [*chunk, since_ms, until_ms],
            )

    def opened(self, refs: Sequence[CheckinRef]) -> Iterator[Statement]:
        # By the venue index's full key, not by scan id: its pages are the ones the
        # windows just read, still in the cache, so only the row's own page is read cold
        # (half the page reads of the scan id's index, measured at 5 M scans).
        for chunk in _chunks(refs):
            values = ", ".join("(?, ?, ?)" for _ in chunk)
            yield (
                f"WITH k (venue_id, at_ms, scan_id) AS (VALUES {values}) "  # noqa: S608
                "SELECT s.scan_id, s.venue_id, s.scanned_at_ms, s.identity FROM k "
                "JOIN scans s ON s.venue_id = k.venue_id AND s.scanned_at_ms = k.at_ms "
                "AND s.scan_id = k.scan_id",
                [value for venue, at_ms, scan_id, _ in chunk for value in (venue, at_ms, scan_id)],
            )


class _ArraySql(TraceSql):
    """PostgreSQL's: one statement per read whatever its size, arrays joined ``LATERAL``.

    ``scans`` has no index on the scan id alone (a partitioned table's unique keys
    must hold the partition key), so a check-in is opened by its covering index key,
    venue, time and scan id: one probe, in the day's partition.
    """

    setup = ("SET LOCAL jit = off",)

    def windows(self, windows: Sequence[tuple[str, int, int]]) -> Iterator[Statement]:
        if windows:
            venues, starts, ends = zip(*windows, strict=True)
            yield (
                "SELECT s.venue_id, s.scanned_at_ms, s.scan_id, s.person_key "
                "FROM unnest(?::text[], ?::bigint[], ?::bigint[]) AS w (venue_id, lo, hi) "
                "CROSS JOIN LATERAL (SELECT venue_id, scanned_at_ms, scan_id, person_key "
                "FROM scans "
                "WHERE venue_id = w.venue_id AND scanned_at_ms BETWEEN w.lo AND w.hi "
                "OFFSET 0) AS s",
                [list(venues), list(starts), list(ends)],
            )

    def visits(
        self, pseudonyms: Sequence[str], since_ms: int, until_ms: int
    ) -> Iterator[Statement]:
        # LATERAL here too: given `person_key = ANY(...)` of 750 people (an F1) the
        # planner read every day in full (390 ms where the probes take a fraction).
        if pseudonyms:
            yield (
                "SELECT s.venue_id, s.scanned_at_ms, s.scan_id, s.person_key "
                "FROM unnest(?::text[]) AS p (person_key) "
                "CROSS JOIN LATERAL (SELECT venue_id, scanned_at_ms, scan_id, person_key "
                "FROM scans WHERE person_key = p.person_key "
                "AND scanned_at_ms BETWEEN ? AND ? OFFSET 0) AS s",
                [list(pseudonyms), since_ms, until_ms],
            )

    def opened(self, refs: Sequence[CheckinRef]) -> Iterator[Statement]:
        if refs:
            venues, times, scan_ids, _ = zip(*refs, strict=True)
            yield (
                "SELECT s.scan_id, s.venue_id, s.scanned_at_ms, s.identity "
                "FROM unnest(?::text[], ?::bigint[], ?::text[]) AS k (venue_id, at_ms, scan_id) "
                "CROSS JOIN LATERAL (SELECT scan_id, venue_id, scanned_at_ms, identity "
                "FROM scans "
                "WHERE venue_id = k.venue_id AND scanned_at_ms = k.at_ms "
                "AND scan_id = k.scan_id OFFSET 0) AS s",
                [list(venues), list(times), list(scan_ids)],
            )


LIST_SQL = TraceSql()
ARRAY_SQL: TraceSql = _ArraySql()


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), WINDOWS_PER_STATEMENT):
        yield items[start : start + WINDOWS_PER_STATEMENT]


class _SnapshotReader:
    """A `TraceReader` on the connection of one open snapshot; dead once it is closed."""

    def __init__(self, store: SqlTrace, conn: SqlConnection) -> None:
        self._store = store
        self._conn = conn
        self._sql = store._trace_sql

    def _rows(self, statements: Iterator[Statement]) -> list[Any]:
        rows: list[Any] = []
        for sql, params in statements:
            rows += self._conn.execute(sql, params).fetchall()
        return rows

    def visits_of(
        self, pseudonyms: Collection[str], since_ms: int, until_ms: int
    ) -> list[CheckinRef]:
        return self._rows(self._sql.visits(sorted(pseudonyms), since_ms, until_ms))

    def checkins_in_windows(
        self, windows: Mapping[str, Sequence[tuple[int, int]]]
    ) -> list[CheckinRef]:
        flat = [(venue, lo, hi) for venue, spans in windows.items() for lo, hi in spans]
        return self._rows(self._sql.windows(flat))

    def open_checkins(self, refs: Collection[CheckinRef]) -> dict[str, Checkin]:
        rows = self._rows(self._sql.opened(list(refs)))
        return {row[0]: self._store._checkin(row) for row in rows}

    def person(self, person_key: str) -> tuple[str, str] | None:
        rows = self._conn.execute(LATEST_OF_SQL, (self.pseudonym(person_key),)).fetchall()
        if not rows:
            return None
        latest = self._store._checkin(rows[0])
        return latest.id_number, latest.name

    def pseudonym(self, person_key: str) -> str:
        return self._store.pseudonym(person_key)


class SqlTrace:
    """`CheckinReader.trace_reader` for both stores (a mixin, like `SqlReports`)."""

    _trace_sql: TraceSql = LIST_SQL
    """How this backend writes the trace's reads; PostgreSQL's store sets `ARRAY_SQL`."""

    # Provided by the store; declared so that mypy checks the mixin on its own.
    def _read_apart(self) -> AbstractContextManager[SqlConnection]:
        """A read snapshot on a connection apart from the one ingest writes on."""
        raise NotImplementedError

    def _checkin(self, row: Sequence[Any]) -> Checkin:
        raise NotImplementedError

    def pseudonym(self, person_key: str) -> str:
        raise NotImplementedError

    @contextmanager
    def trace_reader(self) -> Iterator[TraceReader]:
        """One read snapshot for a whole trace; see the module docstring."""
        # Apart from the store's connection: a trace's seconds do not hold up ingest.
        with self._read_apart() as conn:
            for statement in self._trace_sql.setup:
                conn.execute(statement)
            yield _SnapshotReader(self, conn)
