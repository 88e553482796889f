"""The hub store: each scan once, one transaction per batch, migrations, exact dead letters."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from doorscan.payloads import Identity, parse_qr
from doorscan.synthetic import cccd_text, health_text, make_people
from doorscan.timefmt import to_ms
from doorscan.wire import UnitRecord, VenueRecord
from hub.store import BatchConflict, BatchKey, HubStore, SqliteStore, StoredScan, StoreError
from tests.hubstore import TEST_VAULT, open_store

TODAY = date(2022, 1, 15)
PEOPLE = make_people(5, seed=11)
WHO = [parse_qr(cccd_text(p), today=TODAY) for p in PEOPLE]
T0 = datetime(2021, 8, 15, 2, 30, tzinfo=UTC)
NOW = datetime(2021, 8, 15, 12, 0, tzinfo=UTC)


def scan(
    n: int, who: Identity, at: datetime = T0, venue: str = "cho-pleiku", unit: str | None = "u1"
) -> StoredScan:
    return StoredScan(f"scan-{n:06d}", unit, venue, at, True, who, "mqtt")


def seed_registry(store: HubStore) -> None:
    store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
    store.upsert_venue(VenueRecord(venue_id="benh-vien", name="Bệnh viện tỉnh"))
    store.upsert_unit(UnitRecord(unit_id="u1", venue_id="cho-pleiku"))


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    """The suite runs on every backend of `hub_db`."""
    with open_store(hub_db) as opened:
        seed_registry(opened)
        yield opened


def test_same_scan_twice_is_stored_once_and_reported_duplicate(store: HubStore) -> None:
    first = store.insert_scans([scan(1, WHO[0]), scan(2, WHO[1])], received_at=NOW)
    assert (first.new, first.duplicate) == (["scan-000001", "scan-000002"], [])
    again = store.insert_scans([scan(2, WHO[1]), scan(3, WHO[2])], received_at=NOW)
    assert (again.new, again.duplicate) == (["scan-000003"], ["scan-000002"])
    # Even inside one batch, the second copy is the duplicate.
    same = store.insert_scans([scan(4, WHO[3]), scan(4, WHO[3])], received_at=NOW)
    assert (same.new, same.duplicate) == (["scan-000004"], ["scan-000004"])
    assert store.counts()["scans"] == 4


def test_a_batch_is_all_or_nothing(store: HubStore) -> None:
    good = scan(1, WHO[0])
    bad = scan(2, WHO[1], venue="no-such-venue")  # breaks the venue foreign key
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.insert_scans([good, bad], received_at=NOW)
    assert store.counts()["scans"] == 0
    assert store.checkins_of(WHO[0].person_key, 0, 2**62) == []
    # The store is still usable, and the good scan goes in on its own.
    assert store.insert_scans([good], received_at=NOW).new == [good.scan_id]


def test_checkin_queries_are_inclusive_and_ordered(store: HubStore) -> None:
    minute = timedelta(minutes=1)
    store.insert_scans(
        [
            scan(1, WHO[0], T0 + 2 * minute),
            scan(2, WHO[0], T0),
            scan(3, WHO[1], T0 + minute),
            scan(4, WHO[0], T0 + minute, venue="benh-vien", unit=None),
        ],
        received_at=NOW,
    )
    start, end = to_ms(T0), to_ms(T0 + 2 * minute)
    at_venue = store.checkins_at("cho-pleiku", start, end)
    assert [c.scan_id for c in at_venue] == ["scan-000002", "scan-000003", "scan-000001"]
    assert [c.scan_id for c in store.checkins_at("cho-pleiku", start + 1, end - 1)] == [
        "scan-000003"
    ]
    mine = store.checkins_of(WHO[0].person_key, start, end)
    assert [(c.venue_id, c.at_ms) for c in mine] == [
        ("cho-pleiku", start),
        ("benh-vien", start + 60_000),
        ("cho-pleiku", end),
    ]
    first = mine[0]
    assert (first.kind, first.id_number, first.name) == ("cccd", WHO[0].id_number, WHO[0].name)


def test_person_is_the_latest_known_identity(store: HubStore) -> None:
    health = parse_qr(health_text(PEOPLE[0]))  # same number: the same person, name in capitals
    assert health.person_key == WHO[0].person_key
    store.insert_scans(
        [scan(1, WHO[0], T0), scan(2, health, T0 + timedelta(hours=1))], received_at=NOW
    )
    assert store.person(WHO[0].person_key) == (WHO[0].id_number, health.name)
    assert store.person("id:000000000000") is None


def test_dead_letters_round_trip_bytes_exactly(store: HubStore) -> None:
    payloads = [bytes(range(256)), b"", b"\xff\xfe not utf-8 \x00", "Nguyễn".encode()]
    for n, payload in enumerate(payloads):
        store.add_dead_letter("mqtt", f"t/{n}", payload, "schema", f"reason {n}", NOW)
    letters = store.dead_letters(limit=10)
    assert [d.payload for d in letters] == payloads[::-1]  # newest first
    assert [d.topic for d in letters] == ["t/3", "t/2", "t/1", "t/0"]
    assert letters[0].received_at == NOW and letters[0].code == "schema"
    assert len(store.dead_letters(limit=2)) == 2


def test_registry_upsert_replaces(store: HubStore) -> None:
    store.upsert_unit(UnitRecord(unit_id="u1", venue_id="benh-vien", active=False))
    assert store.unit("u1") == UnitRecord(unit_id="u1", venue_id="benh-vien", active=False)
    store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ mới", district="Pleiku"))
    venue = store.venue("cho-pleiku")
    assert venue is not None and (venue.name, venue.district) == ("Chợ mới", "Pleiku")
    assert [v.venue_id for v in store.venues()] == ["benh-vien", "cho-pleiku"]
    assert store.unit("nope") is None and store.venue("nope") is None


def test_audit_and_counts(store: HubStore) -> None:
    store.insert_scans([scan(1, WHO[0]), scan(2, WHO[0]), scan(3, WHO[1])], received_at=NOW)
    store.add_dead_letter("csv", "f.csv", b"x", "c", "r", NOW)
    store.record_audit("trace", "ca F0 số 12", {"id": "064", "depth": 2}, NOW)
    store.record_audit("visitors", "kiểm tra", {"venue_id": "cho-pleiku"}, NOW)
    entries = store.audit_entries(10)
    assert [(e.action, e.reason) for e in entries] == [
        ("visitors", "kiểm tra"),
        ("trace", "ca F0 số 12"),
    ]
    assert entries[1].params == {"id": "064", "depth": 2} and entries[1].at == NOW
    assert store.counts() == {
        "scans": 3,
        "people": 2,
        "venues": 2,
        "units": 1,
        "dead_letters": 1,
        "held": 0,
    }


def test_venue_range_query_uses_the_index(tmp_path: Path) -> None:
    # SQLite's own query plan; tests/test_postgres_store.py checks PostgreSQL's.
    statements: list[str] = []
    with SqliteStore(tmp_path / "hub.db", vault=TEST_VAULT) as store:
        conn = store._conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        store.checkins_at("cho-pleiku", 0, 10)
        store.checkins_of("id:1", 0, 10)
        conn.set_trace_callback(None)
        plans = [_plan(conn, sql) for sql in statements]
    # The visitor list and the timeline need the identity: the index, then the row.
    assert "USING INDEX scans_by_venue_covering" in plans[0], plans
    assert "USING INDEX scans_by_person_covering" in plans[1], plans
    # In the index's order: no sort.
    assert not [plan for plan in plans if "TEMP B-TREE" in plan], plans


def test_the_trace_reads_only_the_covering_indexes(tmp_path: Path) -> None:
    """The statements a trace runs, as SQLite runs them: the index alone, never a row."""
    statements: list[str] = []
    with SqliteStore(tmp_path / "hub.db", vault=TEST_VAULT) as store:
        seed_registry(store)
        store.insert_scans([scan(n, WHO[n % 5], T0 + timedelta(minutes=n)) for n in range(50)], NOW)
        with store.trace_reader() as reader:
            conn = store._reader  # the trace runs on the store's read connection
            assert conn is not None
            conn.set_trace_callback(statements.append)
            spans = [(to_ms(T0), to_ms(T0) + 60_000), (to_ms(T0) + 600_000, to_ms(NOW))]
            found = reader.checkins_in_windows({"cho-pleiku": spans, "benh-vien": spans})
            reader.visits_of([store.pseudonym(w.person_key) for w in WHO], 0, to_ms(NOW))
            conn.set_trace_callback(None)
            plans = [_plan(conn, sql) for sql in statements if sql.startswith(("WITH", "SELECT"))]
            opened = reader.open_checkins(found[:3])
    assert len(found) == 2 + 40 and len(opened) == 3
    windows, visits = plans
    assert "SEARCH s USING COVERING INDEX scans_by_venue_covering" in windows, windows
    assert "USING COVERING INDEX scans_by_person_covering" in visits, visits
    assert "SCAN scans" not in windows + visits


def _plan(conn: sqlite3.Connection, sql: str) -> str:
    """EXPLAIN QUERY PLAN of a statement the trace callback saw, its values inlined."""
    return " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql))


def test_file_store_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    # SQLite-only: the PRAGMAs of the file itself.
    path = tmp_path / "hub.db"
    with SqliteStore(path, vault=TEST_VAULT) as store:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        # Another process's view of the same file:
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            other.close()


def test_a_second_store_on_the_file_reads_what_the_first_committed(hub_db: str) -> None:
    with open_store(hub_db) as writer, open_store(hub_db) as reader:
        seed_registry(writer)
        writer.insert_scans([scan(1, WHO[0])], received_at=NOW)
        assert reader.counts()["scans"] == 1
        assert reader.person(WHO[0].person_key) == (WHO[0].id_number, WHO[0].name)


def test_threads_share_one_store(store: HubStore) -> None:
    def insert(worker: int) -> None:
        for n in range(20):
            store.insert_scans([scan(worker * 100 + n, WHO[worker])], received_at=NOW)
            store.counts()

    threads = [threading.Thread(target=insert, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.counts()["scans"] == 80


def test_migrations_run_on_reopen_of_an_existing_file(tmp_path: Path) -> None:
    # SQLite-only: an old SQLite file and its user_version.
    path = tmp_path / "hub.db"
    # A file left by a doorscan that knew only the first migration, with data in it.
    raw = sqlite3.connect(path)
    for statement in SqliteStore.MIGRATIONS[0]:
        assert isinstance(statement, str)
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 1")
    raw.execute("INSERT INTO venues (venue_id, name) VALUES ('cho-pleiku', 'Chợ')")
    raw.commit()
    raw.close()

    with open_store(path) as store:
        assert store.venue("cho-pleiku") is not None
        store.record_audit("trace", "why", {}, NOW)  # the table migration 2 adds
    with open_store(path) as store:  # an up-to-date file opens unchanged
        assert len(store.audit_entries()) == 1
    raw = sqlite3.connect(path)
    try:
        version = raw.execute("PRAGMA user_version").fetchone()[0]
        assert version == len(SqliteStore.MIGRATIONS) == 11
    finally:
        raw.close()


def test_a_file_from_a_newer_doorscan_is_refused(tmp_path: Path) -> None:
    # SQLite-only: the version lives in the file's user_version.
    path = tmp_path / "hub.db"
    open_store(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="schema 99"):
        open_store(path)


def test_close_is_idempotent_and_a_closed_store_says_so(hub_db: str) -> None:
    store = open_store(hub_db)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.counts()


def test_a_batch_id_is_remembered_with_its_scans(store: HubStore) -> None:
    scans = [scan(0, WHO[0]), scan(1, WHO[1])]
    key = BatchKey("batch-0001", "u1", "digest-a")
    assert not store.insert_scans(scans, NOW, batch=key).replayed
    again = store.insert_scans(scans, NOW, batch=key)
    assert again.replayed and sorted(again.duplicate) == sorted(s.scan_id for s in scans)
    with pytest.raises(BatchConflict):
        store.insert_scans([scan(2, WHO[2])], NOW, batch=BatchKey("batch-0001", "u1", "other"))
    assert store.counts()["scans"] == 2  # the forged batch stored nothing
