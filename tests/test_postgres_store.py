"""What only the PostgreSQL store has: day partitions, its migrations, its plans, its dump.

Everything a store promises is tested once for both backends by the suites that take
`hub_db`; these tests look at what is PostgreSQL's own, against the real server
(`tests.hubdb.PG_URL`), each in a fresh schema of its own.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import subprocess
import termios
import threading
from collections.abc import Iterator, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from doorscan.payloads import parse_qr
from doorscan.synthetic import cccd_text
from doorscan.timefmt import to_ms
from doorscan.wire import UnitRecord, VenueRecord
from hub.access import AccessControlledStore, Role, TraceQuestion
from hub.store import StoredScan, StoreError, StoreUnavailable
from hub.store.common_store import CHECKINS_AT_SQL, CHECKINS_OF_SQL
from hub.store.common_trace import ARRAY_SQL
from hub.store.postgres import DELETE_DATED_AHEAD, PostgresStore
from hub.store.postgres_schema import SCHEMA_VERSION
from hub.vault import Vault
from tests.access_data import principal
from tests.hubdb import PG_URL, pg_schema_url, raw_sql
from tests.hubstore import TEST_VAULT
from tests.test_vault import PEOPLE, leaks
from tests.waiting import wait_for

# Vietnam days: 2022-01-09 (VN) runs from 2022-01-08T17:00Z to 2022-01-09T17:00Z.
DAY1 = datetime(2022, 1, 7, 17, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)
NOW = DAY3 + timedelta(days=2)
TODAY = NOW.date()
DAYS = ["scans_20220108", "scans_20220109", "scans_20220110"]
TOMORROW = "scans_20220113"  # NOW is the first instant of 2022-01-12 in Vietnam
# How PostgreSQL names a day's copy of the trace's covering indexes (after "scans_<day>_").
BY_VENUE = "venue_id_scanned_at_ms_scan_id_person_key_idx"
BY_PERSON = "person_key_scanned_at_ms_scan_id_venue_id_idx"


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema_url()


def _schema(url: str) -> str:
    ((schema,),) = raw_sql(url, "SELECT current_schema()")
    return str(schema)


def _open(url: str, vault: Vault = TEST_VAULT) -> PostgresStore:
    return PostgresStore(url, vault=vault)


def _registry(store: PostgresStore, venues: int = 1) -> None:
    for n in range(venues):
        store.upsert_venue(VenueRecord(venue_id=f"v{n}", name=f"Chợ {n}"))
        store.upsert_unit(UnitRecord(unit_id=f"u{n}", venue_id=f"v{n}"))


def _scan(scan_id: str, at: datetime, person: int = 0, venue: int = 0) -> StoredScan:
    who = parse_qr(cccd_text(PEOPLE[person % len(PEOPLE)]), today=TODAY)
    return StoredScan(scan_id, f"u{venue}", f"v{venue}", at, True, who, "mqtt")


def _partitions(url: str) -> list[str]:
    rows = raw_sql(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'scans'::regclass ORDER BY 1",
    )
    return [str(name) for (name,) in rows]


# -- partitions --------------------------------------------------------------------------------


def test_each_vietnam_day_gets_its_partition_and_purge_drops_whole_days(pg_url: str) -> None:
    ms = timedelta(milliseconds=1)
    cutoff = DAY2 + timedelta(hours=12)
    with _open(pg_url) as store, _open(pg_url) as other:
        _registry(store)
        assert _partitions(pg_url) == []
        result = store.insert_scans(
            [
                _scan("d1-first", DAY1),
                _scan("d1-last", DAY2 - ms),  # 16:59:59.999 UTC: still the first Vietnam day
                _scan("d2-morning", DAY2 + timedelta(hours=2)),
                _scan("d2-evening", DAY2 + timedelta(hours=20)),
                _scan("d3", DAY3 + timedelta(hours=1)),
            ],
            received_at=NOW,
        )
        assert len(result.new) == 5
        # Dated ahead of its reception (a unit's clock running fast): purged by received_at.
        store.insert_scans([_scan("ahead", cutoff + 2 * ms)], received_at=cutoff - ms)
        assert _partitions(pg_url) == [*DAYS, TOMORROW]
        placed = raw_sql(pg_url, "SELECT scan_id, tableoid::regclass::text FROM scans")
        assert sorted(placed) == [
            ("ahead", "scans_20220109"),
            ("d1-first", "scans_20220108"),
            ("d1-last", "scans_20220108"),
            ("d2-evening", "scans_20220109"),
            ("d2-morning", "scans_20220109"),
            ("d3", "scans_20220110"),
        ]
        other.insert_scans([_scan("d1-other", DAY1 + timedelta(hours=3))], received_at=NOW)

        counts = store.purge_older_than(cutoff, at=NOW, reason="test")

        assert counts == {
            "scans": 5,
            "dead_letters": 0,
            "batches": 0,
            "held_scans": 0,
            "login_failures": 0,
        }
        assert _partitions(pg_url) == [*DAYS[1:], TOMORROW]
        assert sorted(raw_sql(pg_url, "SELECT scan_id FROM scan_ids")) == [
            ("d2-evening",),
            ("d3",),
        ]
        assert store.counts()["scans"] == 2
        [purge] = [e for e in store.audit_entries() if e.action == "purge"]
        assert purge.params["deleted"] == counts
        assert store.verify_audit().ok
        # The purged ids are forgotten: sent again, they are new. `other` still believes
        # the first day's partition exists (it made a scan there); it makes it again.
        again = other.insert_scans([_scan("d1-first", DAY1), _scan("d3", DAY3)], received_at=NOW)
        assert (again.new, again.duplicate) == (["d1-first"], ["d3"])
        assert _partitions(pg_url)[0] == "scans_20220108"


def test_workers_sharing_new_days_and_the_same_scans_store_each_once(pg_url: str) -> None:
    """Four workers at once: each makes the same three days and sends the same scans, half
    of them in the opposite order (which deadlocks if ids are claimed in the order given)."""
    with _open(pg_url) as first:
        _registry(first)
    # Batches large enough that the workers' claims overlap in time.
    shared = [_scan(f"s{k:04d}", DAY1 + timedelta(days=k % 3, seconds=k)) for k in range(3000)]
    new: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        try:
            with _open(pg_url) as store:
                start.wait()
                for chunk in range(0, 3000, 1000):
                    batch = shared[chunk : chunk + 1000]
                    result = store.insert_scans(batch[:: 1 if n % 2 else -1], received_at=NOW)
                    new.extend(result.new)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert _partitions(pg_url) == [*DAYS, TOMORROW]
    assert sorted(new) == [scan.scan_id for scan in shared]
    assert raw_sql(pg_url, "SELECT COUNT(*), COUNT(DISTINCT scan_id) FROM scans") == [(3000, 3000)]


def test_tomorrow_is_made_ahead_unless_a_long_read_holds_the_table(pg_url: str) -> None:
    with _open(pg_url) as store:
        _registry(store)
        store.insert_scans([_scan("s1", DAY1)], received_at=DAY1)
    assert _partitions(pg_url) == DAYS[:2]  # the scan's day and the day after it
    with psycopg.connect(pg_url) as reader, _open(pg_url) as store:
        # A report still reading: making a partition would wait for it, and so would
        # every insert queued behind that. The insert goes ahead and tomorrow waits.
        reader.execute("SELECT COUNT(*) FROM scans").fetchall()
        done = threading.Event()

        def insert() -> None:
            store.insert_scans([_scan("s2", DAY1 + timedelta(hours=1))], received_at=DAY2)
            done.set()

        thread = threading.Thread(target=insert)
        thread.start()
        thread.join(30)
        finished = done.is_set()
        reader.rollback()
        thread.join(30)
        assert finished, "the insert waited for the reader"
        assert _partitions(pg_url) == DAYS[:2]
        assert store.counts()["scans"] == 2


# -- migrations and the vault ------------------------------------------------------------------


def test_migrations_are_numbered_and_a_newer_database_is_refused(pg_url: str) -> None:
    _open(pg_url).close()
    assert raw_sql(pg_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    _open(pg_url).close()  # opening again migrates nothing
    assert raw_sql(pg_url, "SELECT COUNT(*) FROM audit_head") == [(1,)]
    raw_sql(pg_url, "UPDATE schema_version SET version = version + 1")
    with pytest.raises(StoreError, match="newer doorscan"):
        _open(pg_url)


def test_workers_opening_a_new_database_at_once_all_succeed(pg_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_it() -> None:
        try:
            start.wait()
            _open(pg_url).close()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert raw_sql(pg_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert raw_sql(pg_url, "SELECT COUNT(*) FROM vault_check") == [(1,)]


def test_another_vault_key_is_refused(pg_url: str) -> None:
    with _open(pg_url) as store:
        _registry(store)
        store.insert_scans([_scan("s1", DAY1)], received_at=NOW)
    with pytest.raises(StoreError, match="another vault key"):
        _open(pg_url, Vault.generate())
    with _open(pg_url) as store:  # the right key still opens it
        assert store.counts()["scans"] == 1


# -- the trace is an index range scan ----------------------------------------------------------


def _three_busy_days(store: PostgresStore) -> None:
    """40 venues, 97 people, 2 000 scans on each of DAY1 to DAY3: enough for real plans."""
    _registry(store, venues=40)
    for day in range(3):
        scans = [
            _scan(f"s{day}-{n}", DAY1 + timedelta(days=day, seconds=17 * n), n % 97, n % 40)
            for n in range(2000)
        ]
        store.insert_scans(scans, received_at=NOW)


def test_trace_queries_are_index_scans_on_the_days_asked(pg_url: str) -> None:
    with _open(pg_url) as store:
        _three_busy_days(store)
        pseudonym = store.pseudonym(PEOPLE[5].person_key)
    raw_sql(pg_url, "ANALYZE scans")

    def plan(sql: str, *params: object) -> str:
        rows = raw_sql(pg_url, "EXPLAIN " + sql, *params)  # raw_sql takes ? placeholders
        return "\n".join(str(row[0]) for row in rows)

    def seq_scans(text: str) -> list[str]:
        # Of the days that hold rows: tomorrow's partition is empty, and an empty table
        # is rightly read without its index.
        return [day for day in DAYS if f"Seq Scan on {day} " in text]

    hour = DAY2 + timedelta(hours=3)
    at_venue = plan(CHECKINS_AT_SQL, "v7", to_ms(hour), to_ms(hour + timedelta(hours=1)))
    assert not seq_scans(at_venue), at_venue
    assert f"scans_20220109_{BY_VENUE}" in at_venue, at_venue
    assert "scans_20220108" not in at_venue and "scans_20220110" not in at_venue, at_venue

    of_person = plan(CHECKINS_OF_SQL, pseudonym, to_ms(DAY1), to_ms(DAY3 + timedelta(days=1)))
    assert not seq_scans(of_person), of_person
    for name in ("20220108", "20220109", "20220110"):
        assert f"scans_{name}_{BY_PERSON}" in of_person, of_person

    # Retention's search for scans dated ahead of their reception reads the partial index.
    dated_ahead = plan(DELETE_DATED_AHEAD, to_ms(DAY2), to_ms(DAY2))
    assert not seq_scans(dated_ahead), dated_ahead
    assert "scans_20220110_received_at_ms_idx" in dated_ahead, dated_ahead


def test_the_trace_reads_are_index_only_scans(pg_url: str) -> None:
    """The statements a trace runs (`ARRAY_SQL`), planned by the server after ANALYZE."""
    with _open(pg_url) as store:
        _three_busy_days(store)
        # Five of the 97 people who scanned: a trace's frontier is a few of many.
        pseudonyms = [store.pseudonym(p.person_key) for p in PEOPLE[:5]]
    raw_sql(pg_url, "VACUUM ANALYZE scans")
    hour = to_ms(DAY2 + timedelta(hours=3))
    # A thousand windows: as many as an F2 asks for, where a VALUES list was hash-joined.
    windows = [
        (f"v{n % 40}", hour + n * 60_000, hour + n * 60_000 + 3_600_000) for n in range(1000)
    ]
    (windows_sql, windows_params), *_ = ARRAY_SQL.windows(windows)
    (visits_sql, visits_params), *_ = ARRAY_SQL.visits(pseudonyms, to_ms(DAY1), to_ms(DAY3))
    refs = [("v7", to_ms(DAY2), "s1-0", pseudonyms[0])] * 500
    (opened_sql, opened_params), *_ = ARRAY_SQL.opened(refs)

    def plan(sql: str, params: Sequence[object]) -> str:
        rows = raw_sql(pg_url, "EXPLAIN " + sql, *params)
        return "\n".join(str(row[0]) for row in rows)

    for index_only, sql, params in (
        (BY_VENUE, windows_sql, windows_params),
        (BY_PERSON, visits_sql, visits_params),
    ):
        text = plan(sql, params)
        # Tomorrow's partition is empty, and an empty table is rightly read without its index.
        assert "Hash" not in text and "Bitmap" not in text, text
        for partition in DAYS:
            assert f"Seq Scan on {partition} " not in text, text
            assert f"Index Only Scan using {partition}_{index_only}" in text, text
    # Opening a check-in reads its row, found by the full key of the venue's index.
    opened = plan(opened_sql, opened_params)
    assert "Hash" not in opened and "Seq Scan on scans_20220109 " not in opened, opened
    assert f"Index Scan using scans_20220109_{BY_VENUE}" in opened, opened


def test_a_trace_reads_one_repeatable_read_only_snapshot(pg_url: str) -> None:
    with _open(pg_url) as store:
        _registry(store)
        store.insert_scans([_scan("s1", DAY1)], received_at=NOW)
        with store.trace_reader() as reader:
            raw = store._reader  # the trace runs on the store's read connection
            assert raw is not None
            settings = raw.execute(
                "SELECT current_setting('transaction_isolation'), "
                "current_setting('transaction_read_only'), current_setting('jit')"
            ).fetchone()
            assert reader.visits_of([store.pseudonym(PEOPLE[0].person_key)], 0, to_ms(NOW))
    assert settings == ("repeatable read", "on", "off")


# -- nothing in the clear ----------------------------------------------------------------------


def _dump(url: str, into: Path) -> Path:
    """``pg_dump`` of the store's schema: what a stolen backup would hold."""
    dump = subprocess.run(
        ["pg_dump", "--schema", _schema(url), "--dbname", PG_URL],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    into.write_bytes(dump)
    return into


def _hex_leaks(dump: Path) -> list[str]:
    """Names and ID numbers as ``bytea`` shows them in a dump (hex of their UTF-8)."""
    text = dump.read_bytes()
    return [
        person.id_number
        for person in PEOPLE
        if any(v.encode().hex().encode() in text for v in (person.name, person.id_number))
    ]


def test_a_dump_of_the_database_holds_no_name_and_no_id_number(pg_url: str, tmp_path: Path) -> None:
    with _open(pg_url) as store:
        _registry(store, venues=3)
        scans = [
            _scan(f"scan-{n:04d}", DAY1 + timedelta(minutes=7 * n), n, n % 3)
            for n in range(len(PEOPLE))
        ]
        assert len(store.insert_scans(scans, received_at=NOW).new) == 100
        # A refused code, kept as it came, with a reason that quotes it.
        qr = cccd_text(PEOPLE[0]).encode()
        store.add_dead_letter("mqtt", "t", qr, "bad", f"not {PEOPLE[0].name}", NOW)
        tracer = AccessControlledStore(store, principal(Role.TRACER))
        asked = TraceQuestion(PEOPLE[3].id_number, DAY1, NOW, timedelta(minutes=60), 2)
        found = tracer.trace(asked, "ca 1", NOW)
        assert found.index.name == PEOPLE[3].name
        assert store.person_keys_by_name(PEOPLE[4].name) == [PEOPLE[4].person_key]

    clean = _dump(pg_url, tmp_path / "clean.sql")
    assert b"scan-0099" in clean.read_bytes()  # the dump does hold the rows
    assert leaks([clean], PEOPLE) == []
    assert _hex_leaks(clean) == []

    # The control: the same searches find a name written in the clear, as text and as bytes.
    raw_sql(pg_url, "UPDATE venues SET name = ? WHERE venue_id = 'v1'", PEOPLE[7].name)
    raw_sql(pg_url, "UPDATE dead_letters SET payload = convert_to(?, 'UTF8')", PEOPLE[9].name)
    planted = _dump(pg_url, tmp_path / "planted.sql")
    assert leaks([planted], PEOPLE) == [f"{PEOPLE[7].name!r} of {PEOPLE[7].id_number}"]
    assert _hex_leaks(planted) == [PEOPLE[9].id_number]


# -- the server goes away (a restart, a failover: tests/test_pg_failover.py) -----------------

_END_BACKEND = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?"


class _Relay:
    """A TCP relay to the PostgreSQL server, to see exactly what a client has received.

    When the server ends a connection, the relay passes its last message on, waits until
    the client's kernel has taken every byte (nothing left unacknowledged in the relay's
    send queue), and then either passes the end of the stream on too, or (`hold_close`)
    keeps the client's side open until the client writes again: the moment between a
    server's goodbye and the end of its stream, which a client on a loaded machine meets.
    `server_ended` is set once that state has reached the client.
    """

    def __init__(self, server: tuple[str, int], *, hold_close: bool) -> None:
        self.server = server
        self.hold_close = hold_close
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.server_ended = threading.Event()  # a connection the server, not the client, ended
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.server)
                ended = threading.Event()
                for target in (self._forth, self._back):
                    thread = threading.Thread(target=target, args=(client, upstream, ended))
                    thread.daemon = True
                    thread.start()

    @staticmethod
    def _forth(client: socket.socket, upstream: socket.socket, ended: threading.Event) -> None:
        with suppress(OSError):
            while (data := client.recv(65536)) and not ended.is_set():
                upstream.sendall(data)
        # The client left, or wrote after the server's end: the close it was owed, now.
        ended.set()
        client.close()
        upstream.close()

    def _back(self, client: socket.socket, upstream: socket.socket, ended: threading.Event) -> None:
        with suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)
            if ended.is_set():
                return  # the client ended it
            ended.set()
            if not self.hold_close:
                client.shutdown(socket.SHUT_WR)
            if wait_for(lambda: _unacknowledged(client) == 0):
                self.server_ended.set()

    def close(self) -> None:
        self.listener.close()


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes (and a FIN) sent on `sock` that the peer's kernel has not acknowledged yet."""
    return int(struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0])


@pytest.mark.parametrize("hold_close", [False, True], ids=["goodbye-and-end", "goodbye-only"])
def test_a_connection_the_server_ended_while_idle_is_replaced_before_use(
    pg_url: str, hold_close: bool
) -> None:
    name = f"doorscan-idle-{_schema(pg_url)}"
    where = urlsplit(pg_url)
    relay = _Relay((where.hostname or "127.0.0.1", where.port or 5432), hold_close=hold_close)
    through = where._replace(netloc=f"{where.username}@127.0.0.1:{relay.port}")
    try:
        with _open(f"{urlunsplit(through)}&application_name={name}") as store:
            _registry(store)
            store.insert_scans([_scan("s1", DAY1)], received_at=NOW)
            # A server restart or failover, as the store sees it between two calls: its
            # backend says goodbye and is gone, and what it sent is in the store's socket.
            assert raw_sql(pg_url, _END_BACKEND, name) == [(True,)]
            assert relay.server_ended.wait(10)
            result = store.insert_scans([_scan("s2", DAY1), _scan("s1", DAY1)], received_at=NOW)
            assert (result.new, result.duplicate) == (["s2"], ["s1"])
    finally:
        relay.close()
    with pytest.raises(StoreError, match="closed"):
        store.counts()


def test_a_connection_lost_mid_transaction_fails_that_call_alone(pg_url: str) -> None:
    name = f"doorscan-busy-{_schema(pg_url)}"
    failures: list[BaseException] = []
    with _open(f"{pg_url}&application_name={name}") as store:
        _registry(store)
        store.insert_scans([_scan("s1", DAY1)], received_at=NOW)  # its day's partition made

        def insert() -> None:
            try:
                store.insert_scans([_scan("s2", DAY1)], received_at=NOW)
            except BaseException as exc:  # looked at below
                failures.append(exc)

        with psycopg.connect(pg_url) as blocker:
            # The ids table held: the store's insert waits in the middle of its transaction.
            blocker.execute("LOCK TABLE scan_ids IN EXCLUSIVE MODE")
            thread = threading.Thread(target=insert)
            thread.start()
            waiting = (
                "SELECT COUNT(*) FROM pg_stat_activity "
                "WHERE application_name = ? AND wait_event_type = 'Lock'"
            )
            assert wait_for(lambda: raw_sql(pg_url, waiting, name) == [(1,)])
            assert raw_sql(pg_url, _END_BACKEND, name) == [(True,)]
            thread.join(30)
        assert len(failures) == 1 and isinstance(failures[0], StoreUnavailable), failures
        assert raw_sql(pg_url, "SELECT COUNT(*) FROM scan_ids WHERE scan_id = 's2'") == [(0,)]
        result = store.insert_scans([_scan("s2", DAY1), _scan("s1", DAY1)], received_at=NOW)
        assert (result.new, result.duplicate) == (["s2"], ["s1"])
