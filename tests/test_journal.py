"""The scan journal on real SQLite: exact round trips, crash durability, faults, backlog."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device.journal import JOURNAL_SCHEMA_VERSION, DuplicateScanError, JournalError, ScanJournal
from doorscan.errors import DoorscanError
from doorscan.synthetic import cccd_text, health_text, make_people
from doorscan.wire import Scan

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2021, 8, 15, 2, 0, tzinfo=UTC)
PEOPLE = make_people(8, seed=3)


def make_scan(i: int, *, at: datetime | None = None, trusted: bool = True) -> Scan:
    person = PEOPLE[i % len(PEOPLE)]
    return Scan(
        scan_id=uuid.uuid4().hex,
        venue_id="cho-ia-kha",
        scanned_at=at if at is not None else T0 + timedelta(seconds=i, milliseconds=i % 1000),
        clock_trusted=trusted,
        qr_text=cccd_text(person) if i % 2 else health_text(person, masked=i % 3 == 0),
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[ScanJournal]:
    with ScanJournal(tmp_path / "journal.db") as opened:
        yield opened


def test_round_trip_is_exact_and_survives_reopening(tmp_path: Path) -> None:
    scans = [make_scan(i, trusted=i != 2) for i in range(6)]
    scans.append(make_scan(6, at=datetime(1970, 1, 1, 0, 0, 5, 1000, tzinfo=UTC), trusted=False))
    with ScanJournal(tmp_path / "journal.db") as journal:
        for scan in scans:
            journal.record(scan)
        assert journal.pending(100) == scans
    with ScanJournal(tmp_path / "journal.db") as reopened:
        got = reopened.pending(100)
        assert got == scans
        assert [s.model_dump() for s in got] == [s.model_dump() for s in scans]
        assert reopened.backlog() == len(scans)
        assert reopened.integrity_ok()


def test_sub_millisecond_times_are_refused_because_they_would_not_round_trip(
    journal: ScanJournal,
) -> None:
    with pytest.raises(ValueError, match="millisecond"):
        journal.record(make_scan(0, at=T0.replace(microsecond=123_456)))
    assert journal.backlog() == 0


def test_recording_a_scan_id_twice_raises_and_keeps_the_first(journal: ScanJournal) -> None:
    first = make_scan(1)
    journal.record(first)
    again = first.model_copy(update={"qr_text": "something else"})
    with pytest.raises(DuplicateScanError) as caught:
        journal.record(again)
    assert isinstance(caught.value, JournalError)
    assert isinstance(caught.value, DoorscanError)
    assert first.scan_id in str(caught.value)
    assert journal.pending(10) == [first]
    journal.record(make_scan(2))  # still usable
    assert journal.backlog() == 2


def test_pending_keeps_recording_order_and_leaves_out_skipped_ids(journal: ScanJournal) -> None:
    # Scan times go backwards (a clock correction): the order is still the recording order.
    scans = [make_scan(i, at=T0 - timedelta(minutes=i)) for i in range(10)]
    for scan in scans:
        journal.record(scan)
    ids = [s.scan_id for s in scans]
    assert journal.pending(3) == scans[:3]
    assert journal.pending(3, skip=frozenset(ids[:3])) == scans[3:6]
    assert journal.pending(3, skip=[ids[0], ids[4]]) == [scans[1], scans[2], scans[3]]
    # Ids that are not pending (unknown, or settled) do not shorten the answer.
    journal.settle(ids[:2], at=T0)
    assert journal.pending(3, skip={ids[0], ids[1], "not-a-known-id"}) == scans[2:5]
    assert journal.pending(100, skip=set(ids)) == []
    assert journal.pending(0) == []


def test_settle_counts_changes_ignores_unknown_ids_and_is_idempotent(journal: ScanJournal) -> None:
    scans = [make_scan(i) for i in range(5)]
    for scan in scans:
        journal.record(scan)
    ids = [s.scan_id for s in scans]
    assert journal.settle([ids[0], ids[1], ids[1], "unknown-scan-id"], at=T0) == 2
    assert journal.backlog() == 3
    assert journal.settle([ids[0], ids[1]], at=T0 + timedelta(days=3)) == 0
    assert journal.settle([], at=T0) == 0
    assert journal.pending(10) == scans[2:]
    # The first settle time is the one kept: a purge just after it removes the scans,
    # which it would not if the second settle (3 days later) had overwritten it.
    journal.record(make_scan(99))  # the newest row, which purge always keeps
    assert journal.purge_settled(T0 + timedelta(hours=1)) == 2


def test_purge_deletes_only_old_settled_scans_and_keeps_the_newest(journal: ScanJournal) -> None:
    old = [make_scan(i, at=T0 + timedelta(minutes=i)) for i in range(4)]
    for scan in old:
        journal.record(scan)
    journal.settle([old[0].scan_id, old[1].scan_id, old[3].scan_id], at=T0 + timedelta(hours=1))
    day_later = T0 + timedelta(days=1, hours=2)
    assert journal.purge_settled(T0 + timedelta(minutes=30)) == 0  # acked after that time
    assert journal.purge_settled(day_later) == 2  # old[3] is the newest row: kept
    assert journal.pending(10) == [old[2]]  # unsettled scans are never purged
    assert journal.last_scan_at() == old[3].scanned_at
    assert journal.purge_settled(day_later) == 0
    assert journal.integrity_ok()


def test_purge_keeps_a_scan_with_a_stale_clock_until_a_day_after_its_ack(
    journal: ScanJournal,
) -> None:
    stale = make_scan(0, at=datetime(1970, 1, 1, 0, 1, tzinfo=UTC), trusted=False)
    journal.record(stale)
    journal.record(make_scan(1))
    journal.settle([stale.scan_id], at=T0)
    assert journal.purge_settled(T0 - timedelta(hours=1)) == 0
    assert journal.purge_settled(T0 + timedelta(days=1)) == 1


def test_last_scan_at_is_the_last_recorded_scan(journal: ScanJournal) -> None:
    assert journal.last_scan_at() is None
    journal.record(make_scan(0, at=T0))
    journal.record(make_scan(1, at=T0 - timedelta(hours=7)))  # the wall clock jumped back
    assert journal.last_scan_at() == T0 - timedelta(hours=7)


def test_a_full_disk_is_a_journal_error_and_recording_resumes_when_space_returns(
    journal: ScanJournal,
) -> None:
    kept = [make_scan(i) for i in range(3)]
    for scan in kept:
        journal.record(scan)
    journal.set_max_bytes(1)  # never below the current size: the file cannot grow now
    with pytest.raises(JournalError) as caught:
        for i in range(3, 2000):
            journal.record(make_scan(i))
    assert isinstance(caught.value, OSError)
    assert "SQLITE_FULL" in str(caught.value)
    assert "NOT recorded" in str(caught.value)
    recorded_before_full = journal.pending(5000)
    assert recorded_before_full[:3] == kept
    failed_id = str(caught.value).split()[1]
    assert failed_id not in {s.scan_id for s in recorded_before_full}

    journal.set_max_bytes(None)
    after = make_scan(5000)
    journal.record(after)
    assert journal.pending(5000) == [*recorded_before_full, after]
    assert journal.integrity_ok()


def test_use_after_close_is_a_journal_error_and_close_is_idempotent(tmp_path: Path) -> None:
    journal = ScanJournal(tmp_path / "journal.db")
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.record(make_scan(0))
    with pytest.raises(JournalError, match="closed"):
        journal.pending(1)


def test_a_journal_from_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    ScanJournal(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={JOURNAL_SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="schema"):
        ScanJournal(path)


def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    garbage = b"this is not SQLite" * 300
    path.write_bytes(garbage)
    with pytest.raises(JournalError, match=r"journal\.db"):
        ScanJournal(path)
    assert path.read_bytes() == garbage


def _bulk_rows(path: Path, count: int) -> None:
    # 100 000 separate fsynced commits would take the whole test budget; the rows go in
    # in one transaction through SQLite directly, in the journal's own schema: first
    # `count` settled scans (a day kept for the ministry), then `count` pending ones.
    with sqlite3.connect(path) as conn:
        for prefix, acked_at_ms in (("done", 1629000900000), ("bulk", None)):
            conn.execute(
                """
                WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                INSERT INTO scans
                    (scan_id, venue_id, scanned_at_ms, clock_trusted, qr_text, acked_at_ms)
                SELECT printf('%s%08d', ?, i), 'cho-ia-kha', 1629000000000 + i, 1, 'qr ' || i, ?
                FROM n
                """,
                (count, prefix, acked_at_ms),
            )


def _vm_steps(journal: ScanJournal, skip: frozenset[str]) -> tuple[int, list[Scan]]:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn = journal._conn  # the one place a test looks inside: SQLite's instruction counter
    assert conn is not None
    conn.set_progress_handler(count, 100)
    try:
        scans = journal.pending(100, skip=skip)
    finally:
        conn.set_progress_handler(None, 0)
    return steps, scans


def test_pending_costs_the_same_with_50_000_pending_and_50_000_settled_rows(tmp_path: Path) -> None:
    skip = frozenset(f"bulk{i:08d}" for i in range(1, 401))  # four batches in flight
    cost: dict[int, int] = {}
    for count in (1_000, 50_000):
        path = tmp_path / f"journal-{count}.db"
        ScanJournal(path).close()
        _bulk_rows(path, count)
        with ScanJournal(path) as journal:
            assert journal.backlog() == count
            _, first = _vm_steps(journal, skip)  # warm the page cache
            cost[count], scans = _vm_steps(journal, skip)
            assert [s.scan_id for s in scans] == [f"bulk{i:08d}" for i in range(401, 501)]
            assert first == scans
    # Counted in SQLite VM instructions, not seconds: walking past the settled rows, or
    # sorting the backlog, would make the larger journal about 50 times dearer.
    assert cost[50_000] <= cost[1_000] * 1.5 + 5


def test_a_scanner_thread_and_a_sync_thread_share_the_journal(journal: ScanJournal) -> None:
    scans = [make_scan(i) for i in range(300)]
    done = threading.Event()
    errors: list[BaseException] = []
    settled: list[str] = []

    def scanner() -> None:
        try:
            for scan in scans:
                journal.record(scan)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def sync() -> None:
        try:
            while True:
                finished = done.is_set()
                batch = journal.pending(25)
                journal.settle([s.scan_id for s in batch], at=T0)
                settled.extend(s.scan_id for s in batch)
                if finished and not batch:
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=scanner), threading.Thread(target=sync)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert settled == [s.scan_id for s in scans]
    assert journal.backlog() == 0
    assert journal.integrity_ok()


_CHILD = textwrap.dedent(
    """
    import sys, uuid
    from datetime import UTC, datetime, timedelta
    from device.journal import ScanJournal
    from doorscan.wire import Scan

    start = datetime(2021, 8, 15, 2, 0, tzinfo=UTC)
    with ScanJournal(sys.argv[1]) as journal:
        for i in range(100_000):
            scan = Scan(
                scan_id=uuid.uuid4().hex,
                venue_id="cho-ia-kha",
                scanned_at=start + timedelta(milliseconds=37 * i),
                clock_trusted=i % 5 != 0,
                qr_text=f"064090{i:06d}||Nguyễn Văn An|01011990|Nam|Thôn 3, Xã Ia Kha|15082021",
            )
            journal.record(scan)
            sys.stdout.write(scan.model_dump_json() + "\\n")
            sys.stdout.flush()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20))
def test_every_reported_scan_survives_sigkill_at_a_random_moment(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "journal.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=REPO,
    )
    assert child.stdout is not None and child.stderr is not None
    reported: list[Scan] = []
    try:
        wait_for_lines = rng.choice([0, rng.randint(1, 300)])
        if wait_for_lines == 0:
            # Kill during start-up: maybe while the schema is being created.
            time.sleep(rng.uniform(0.0, 0.6))
        while len(reported) < wait_for_lines:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"the child stopped early: {child.stderr.read()[-2000:]}")
            reported.append(Scan.model_validate_json(line))
        time.sleep(rng.uniform(0.0, 0.005))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    # Lines written before the kill are still in the pipe; only whole lines count.
    for line in child.stdout.read().splitlines(keepends=True):
        if line.endswith("\n"):
            reported.append(Scan.model_validate_json(line))
    child.stdout.close()
    child.stderr.close()

    with ScanJournal(path) as journal:
        assert journal.integrity_ok()
        stored = journal.pending(1_000_000)
    assert stored[: len(reported)] == reported
    # At most one scan was committed whose line the child did not get to write.
    assert len(stored) - len(reported) in (0, 1)


def test_a_version_1_journal_is_migrated_and_keeps_its_backlog(tmp_path: Path) -> None:
    import sqlite3

    from device.journal import _SCHEMA_V1

    path = tmp_path / "journal.db"
    raw = sqlite3.connect(path)
    for statement in _SCHEMA_V1:
        raw.execute(statement)
    raw.execute(
        "INSERT INTO scans (scan_id, venue_id, scanned_at_ms, clock_trusted, qr_text) "
        "VALUES ('old-scan-1', 'cho-ia-kha', 1641776400000, 1, 'x')"
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with ScanJournal(path) as journal:
        [old] = journal.pending(10)
        assert (old.scan_id, old.boot_id, old.mono_ms) == ("old-scan-1", None, None)
        untrusted = make_scan(1, trusted=False).model_copy(
            update={"boot_id": "ab12cd34", "mono_ms": 5}
        )
        journal.record(untrusted)
        assert journal.pending(10)[1] == untrusted
