"""The store's trace reads (`TraceReader`): exact windows, no identity, one snapshot.

Run on both backends (`hub_db`); what each backend's planner makes of them is checked in
tests/test_store.py (SQLite) and tests/test_postgres_store.py (PostgreSQL).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence

import pytest

from doorscan.timefmt import from_ms
from hub.store import Checkin, CheckinRef, TraceReader, common_trace
from hub.trace import TraceParams, trace
from tests.hubstore import open_store
from tests.test_trace import NOW, VENUES, WHO, Row, at, build_store, fill


def _rows() -> list[Row]:
    # Four people, three venues, a check-in every 7 minutes for two hours.
    return [Row(n % 4, n % 3, at(7 * n)) for n in range(18)]


def _expected(
    rows: list[Row], windows: Mapping[int, list[tuple[int, int]]]
) -> set[tuple[str, int]]:
    return {
        (VENUES[r.venue], r.at_ms)
        for r in rows
        if any(lo <= r.at_ms <= hi for lo, hi in windows.get(r.venue, []))
    }


def test_checkins_in_windows_reads_each_window_edges_included(hub_db: str) -> None:
    rows = _rows()
    spans = {0: [(at(0), at(21)), (at(63), at(64))], 2: [(at(35), at(35))], 1: [(at(200), at(300))]}
    with build_store(hub_db, rows) as store, store.trace_reader() as reader:
        found = reader.checkins_in_windows({VENUES[v]: intervals for v, intervals in spans.items()})
        pseudonyms = {reader.pseudonym(w.person_key): n for n, w in enumerate(WHO)}
    assert {(venue, at_ms) for venue, at_ms, _, _ in found} == _expected(rows, spans)
    assert len(found) == len(_expected(rows, spans)) == 4  # at(0), 21, 63 at v0; at(35) at v2
    # Who only by pseudonym, and the right one: no identity leaves a window read.
    by_time = {at_ms: pseudonym for _, at_ms, _, pseudonym in found}
    for r in rows:
        if r.at_ms in by_time:
            assert pseudonyms[by_time[r.at_ms]] == r.person
    assert all(len(ref) == 4 and isinstance(ref[3], str) for ref in found)


def test_many_windows_give_the_same_rows_in_many_statements(
    hub_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows()
    spans = {v: [(at(m), at(m + 3)) for m in range(0, 120, 5)] for v in range(3)}
    windows = {VENUES[v]: intervals for v, intervals in spans.items()}
    with build_store(hub_db, rows) as store:
        people = [store.pseudonym(w.person_key) for w in WHO[:4]]
        with store.trace_reader() as reader:
            whole = sorted(reader.checkins_in_windows(windows))
            everyone = sorted(reader.visits_of(people, 0, at(999)))
        monkeypatch.setattr(common_trace, "WINDOWS_PER_STATEMENT", 2)
        with store.trace_reader() as reader:
            cut = sorted(reader.checkins_in_windows(windows))
            cut_visits = sorted(reader.visits_of(people, 0, at(999)))
    assert whole == cut and {(v, t) for v, t, _, _ in whole} == _expected(rows, spans)
    assert everyone == cut_visits and len(everyone) == len(rows)


def test_visits_of_reads_the_people_asked_in_the_period(hub_db: str) -> None:
    rows = _rows()
    with build_store(hub_db, rows) as store, store.trace_reader() as reader:
        asked = [reader.pseudonym(WHO[1].person_key), reader.pseudonym(WHO[3].person_key)]
        found = reader.visits_of(asked, at(7), at(77))
        assert reader.visits_of([], 0, at(999)) == []
    expected = {
        (VENUES[r.venue], r.at_ms)
        for r in rows
        if r.person in (1, 3) and at(7) <= r.at_ms <= at(77)
    }
    assert {(venue, at_ms) for venue, at_ms, _, _ in found} == expected
    assert {pseudonym for *_, pseudonym in found} == set(asked)


def test_open_checkins_opens_what_is_asked_only(hub_db: str) -> None:
    rows = _rows()
    with build_store(hub_db, rows) as store, store.trace_reader() as reader:
        found = reader.checkins_in_windows({VENUES[0]: [(at(0), at(200))]})
        asked = found[:2]
        opened = reader.open_checkins(asked)
        assert reader.open_checkins([]) == {}
        # A check-in that is not stored (a made-up scan id) opens as nothing.
        venue, at_ms, _, pseudonym = found[0]
        assert reader.open_checkins([(venue, at_ms, "no-such-scan", pseudonym)]) == {}
    assert sorted(opened) == sorted(scan_id for _, _, scan_id, _ in asked)
    by_key = {w.person_key: w for w in WHO}
    for venue, at_ms, scan_id, _ in asked:
        checkin = opened[scan_id]
        who = by_key[checkin.person_key]
        assert (checkin.venue_id, checkin.at_ms) == (venue, at_ms)
        assert (checkin.id_number, checkin.name) == (who.id_number, who.name)


def test_a_trace_reads_one_snapshot(hub_db: str) -> None:
    """A scan stored by another connection while a trace runs is not in that trace."""
    rows = [Row(0, 0, at(0)), Row(1, 0, at(10)), Row(1, 1, at(30))]
    late = [Row(2, 0, at(20)), Row(3, 1, at(40))]  # would be an F1 and an F2

    class StoringMidway:
        """The snapshot's reader; another hub process stores `late` before its first window."""

        def __init__(self, reader: TraceReader, locator: str) -> None:
            self.reader, self.locator, self.stored = reader, locator, False

        def visits_of(
            self, pseudonyms: Collection[str], since_ms: int, until_ms: int
        ) -> list[CheckinRef]:
            return self.reader.visits_of(pseudonyms, since_ms, until_ms)

        def checkins_in_windows(
            self, windows: Mapping[str, Sequence[tuple[int, int]]]
        ) -> list[CheckinRef]:
            if not self.stored:
                with open_store(self.locator) as other:
                    fill(other, late, batch=1)
                self.stored = True
            return self.reader.checkins_in_windows(windows)

        def open_checkins(self, refs: Collection[CheckinRef]) -> dict[str, Checkin]:
            return self.reader.open_checkins(refs)

        def person(self, person_key: str) -> tuple[str, str] | None:
            return self.reader.person(person_key)

        def pseudonym(self, person_key: str) -> str:
            return self.reader.pseudonym(person_key)

    params = TraceParams(WHO[0].person_key, from_ms(at(-60)), from_ms(at(120)), depth=2)
    with build_store(hub_db, rows) as store:
        with store.trace_reader() as snapshot:
            midway = StoringMidway(snapshot, hub_db)
            during = trace(midway, params)
        assert midway.stored
        with store.trace_reader() as snapshot:
            after = trace(snapshot, params)
    assert [c.person_key for c in during.contacts] == [WHO[1].person_key]
    assert {c.person_key for c in after.contacts} == {
        WHO[1].person_key,
        WHO[2].person_key,
        WHO[3].person_key,
    }


def test_the_snapshot_ends_with_its_block(hub_db: str) -> None:
    """Writes go on after a trace: the snapshot holds nothing once its block is left."""
    with build_store(hub_db, _rows()) as store:
        with store.trace_reader() as reader:
            assert reader.visits_of([reader.pseudonym(WHO[0].person_key)], 0, at(999))
        fill(store, [Row(0, 1, at(500))], batch=2)
        store.record_audit("trace", "after a trace", {}, NOW)
        with store.trace_reader() as reader:
            mine = reader.visits_of([reader.pseudonym(WHO[0].person_key)], at(500), at(500))
    assert [(venue, at_ms) for venue, at_ms, _, _ in mine] == [(VENUES[1], at(500))]


def test_the_same_store_stores_scans_while_a_trace_reads(hub_db: str) -> None:
    """A trace holds its own read connection: the hub that serves it (``serve --http``,
    one store object) goes on storing what the doors send while the trace runs."""
    with build_store(hub_db, _rows()) as store, store.trace_reader() as reader:
        reader.visits_of([reader.pseudonym(WHO[0].person_key)], 0, at(999))
        late = [Row(0, 1, at(600))]
        stored = threading.Thread(target=fill, args=(store, late), kwargs={"batch": 3})
        stored.start()
        stored.join(10)
        assert not stored.is_alive(), "storing waited for the trace to end"
        # The trace still sees the state it began with.
        mine = reader.visits_of([reader.pseudonym(WHO[0].person_key)], at(600), at(600))
        assert mine == []
