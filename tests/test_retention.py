"""Retention: `purge` forgets scans, dead letters and batch ids older than the period, not the log.

The boundary is exclusive: a row dated exactly at the cutoff is `retention_days` old,
still inside the period, and is kept; one millisecond older goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from doorscan.payloads import parse_qr
from doorscan.synthetic import cccd_text, make_people
from doorscan.timefmt import to_ms
from doorscan.wire import UnitRecord, VenueRecord
from hub.cli import main
from hub.retention import DEFAULT_RETENTION_DAYS, purge_expired, retention_cutoff
from hub.store import BatchKey, Hold, HubStore, StoredScan
from hub.store.factory import is_postgres
from tests.hubdb import raw_sql
from tests.hubstore import open_store

TODAY = date(2022, 1, 15)
WHO = [parse_qr(cccd_text(p), today=TODAY) for p in make_people(3, seed=7)]
NOW = datetime(2021, 9, 30, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=28)
MS = timedelta(milliseconds=1)
# Ages relative to the cutoff: older ones go, the one exactly at the cutoff and newer stay.
OLD, AT_CUTOFF, NEW = CUTOFF - timedelta(days=3), CUTOFF, CUTOFF + timedelta(days=1)
JUST_OLDER = CUTOFF - MS


def fill(store: HubStore, times: dict[str, datetime], *, held: bool = False) -> None:
    """One scan, one dead letter and one batch id per named time, each dated at it;
    with `held`, also one scan held apart from traces."""
    for n, (name, at) in enumerate(times.items()):
        scans = [StoredScan(f"scan-{name}", "u1", "cho-pleiku", at, True, WHO[n % 3], "mqtt")]
        if held:
            hold = Hold("too_fast", "a test")
            scans.append(replace(scans[0], scan_id=f"held-{name}", hold=hold))
        store.insert_scans(scans, received_at=at, batch=BatchKey(f"batch-{name}", "u1", name))
        store.add_dead_letter("mqtt", "doorscan/v1/units/u1/scans", b"{", "not_json", name, at)


TIMES = {"old": OLD, "just_older": JUST_OLDER, "at_cutoff": AT_CUTOFF, "new": NEW}


@pytest.fixture
def db(hub_db: str) -> Iterator[str]:
    with open_store(hub_db) as store:
        store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
        store.upsert_unit(UnitRecord(unit_id="u1", venue_id="cho-pleiku"))
        fill(store, TIMES)
        store.record_audit("trace", "ca F0 số 1", {}, OLD)  # old, and kept
    yield hub_db


def remaining(db: str) -> dict[str, list[str]]:
    with open_store(db) as store:  # a dead letter's reason is sealed: read it opened
        reasons = [letter.reason for letter in reversed(store.dead_letters(limit=1000))]
    return {
        "scans": [r[0] for r in raw_sql(db, "SELECT scan_id FROM scans ORDER BY scan_id")],
        "dead_letters": reasons,
        "batches": sorted(r[0] for r in raw_sql(db, "SELECT batch_id FROM batches")),
    }


def test_purge_deletes_only_what_is_older_than_the_cutoff(db: str) -> None:
    with open_store(db) as store:
        counts = store.purge_older_than(CUTOFF, at=NOW)
        assert store.counts()["scans"] == 2
    assert counts == {
        "scans": 2,
        "dead_letters": 2,
        "batches": 2,
        "held_scans": 0,
        "login_failures": 0,
    }
    assert remaining(db) == {
        "scans": ["scan-at_cutoff", "scan-new"],
        "dead_letters": ["at_cutoff", "new"],
        "batches": ["batch-at_cutoff", "batch-new"],
    }


def test_purge_is_recorded_in_the_audit_chain_and_the_log_is_kept(db: str) -> None:
    with open_store(db) as store:
        purge_expired(store, NOW, retention_days=28)
        entries = store.audit_entries()
        check = store.verify_audit()
    assert [(e.action, e.reason) for e in entries] == [
        ("purge", "retention: 28 days"),
        ("trace", "ca F0 số 1"),
    ]
    assert entries[0].at == NOW
    assert entries[0].params == {
        "cutoff": "2021-09-02T12:00:00.000Z",
        "deleted": {
            "scans": 2,
            "dead_letters": 2,
            "batches": 2,
            "held_scans": 0,
            "login_failures": 0,
        },
    }
    assert (check.ok, check.entries) == (True, 2)


def test_a_second_purge_finds_nothing_and_a_scan_older_than_received_also_goes(
    db: str,
) -> None:
    with open_store(db) as store:
        store.purge_older_than(CUTOFF, at=NOW)
        assert store.purge_older_than(CUTOFF, at=NOW) == {
            "scans": 0,
            "dead_letters": 0,
            "batches": 0,
            "held_scans": 0,
            "login_failures": 0,
        }
        # Dated a minute after the cutoff (clock ahead) but received before it.
        ahead = CUTOFF + timedelta(minutes=1)
        late = StoredScan("scan-ahead", "u1", "cho-pleiku", ahead, True, WHO[0], "mqtt")
        store.insert_scans([late], received_at=CUTOFF - timedelta(minutes=3))
        assert store.purge_older_than(CUTOFF, at=NOW)["scans"] == 1


def test_cutoff_and_default() -> None:
    assert DEFAULT_RETENTION_DAYS == 28
    assert retention_cutoff(NOW, 28) == CUTOFF
    with pytest.raises(ValueError, match="positive"):
        retention_cutoff(NOW, 0)


# Tables whose times are not check-ins, kept past the retention period on purpose.
KEPT_PAST_RETENTION = {
    "audit": "the record of who read which identities, and why",
    "sqlite_sequence": "SQLite's own counters",
    "users": "staff accounts of the hub, not visitors",
    "tokens": "staff sessions and API tokens; they expire on their own",
    "unit_status": "one row per door unit, its latest health; no visitor in it",
    "units": "the registry: when a door unit was registered; no visitor in it",
    "unit_configs": "the remote configs issued to door units; no visitor in it",
    "fleet_keys": "the fleet's public keys as last published; no visitor in it",
}


def ms_columns(db: str) -> list[tuple[str, str]]:
    """(table, column) for every *_ms column of every table; partitions count as their parent."""
    if is_postgres(db):
        rows = raw_sql(
            db,
            "SELECT c.relname, a.attname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
            " AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped",
        )
    else:
        tables = [r[0] for r in raw_sql(db, "SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [(t, r[1]) for t in tables for r in raw_sql(db, f"PRAGMA table_info({t})")]
    return [(table, column) for table, column in rows if column.endswith("_ms")]


def test_after_a_purge_no_table_holds_a_time_older_than_the_cutoff(hub_db: str) -> None:
    """Every *_ms column of every table is checked, so a table added later is covered too."""
    now = datetime.now(UTC)
    cutoff = retention_cutoff(now, 28)
    with open_store(hub_db) as store:
        store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
        store.upsert_unit(UnitRecord(unit_id="u1", venue_id="cho-pleiku"))
        fill(store, {"a": cutoff - timedelta(days=400), "b": cutoff - MS, "c": now}, held=True)
        assert store.counts()["held"] == 3
        purge_expired(store, now)
        assert store.counts()["held"] == 1
    checked = []
    for table, column in ms_columns(hub_db):
        if table in KEPT_PAST_RETENTION:
            continue
        ((oldest,),) = raw_sql(hub_db, f"SELECT min({column}) FROM {table}")
        assert oldest is None or oldest >= to_ms(cutoff), (table, column)
        checked.append(f"{table}.{column}")
    # PostgreSQL keeps scan ids in a table of their own (a partitioned table's unique
    # keys must hold the partition key), dated so that retention forgets them too.
    own_ids = ["scan_ids.scanned_at_ms"] if is_postgres(hub_db) else []
    assert sorted(checked) == [
        "batches.received_at_ms",
        "dead_letters.received_at_ms",
        "held_scans.received_at_ms",
        "held_scans.scanned_at_ms",
        "login_failures.at_ms",
        *own_ids,
        "scans.received_at_ms",
        "scans.scanned_at_ms",
    ]


def test_cli_purge(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The fixture's rows are from 2021, so with the real clock and a 28-day period all go.
    assert main(["purge", "--db", db]) == 0
    out = capsys.readouterr().out
    assert out.startswith("purged everything older than ")
    assert ": 4 scans, 4 dead letters, 4 batch ids (the audit log is kept)" in out
    assert remaining(db) == {"scans": [], "dead_letters": [], "batches": []}

    assert main(["purge", "--db", db, "--retention-days", "7"]) == 0
    assert ": 0 scans, 0 dead letters, 0 batch ids" in capsys.readouterr().out
    with open_store(db) as store:
        purges = [e for e in store.audit_entries() if e.action == "purge"]
    assert [e.reason for e in purges] == ["retention: 7 days", "retention: 28 days"]

    assert main(["purge", "--db", db, "--retention-days", "0"]) == 2
    assert main(["purge", "--db", db, "--retention-days", "x"]) == 2
    assert main(["purge", "--db", str(tmp_path / "none.db")]) == 2


def test_cli_purge_keeps_what_is_inside_the_period(
    hub_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = hub_db
    now = datetime.now(UTC)
    with open_store(path) as store:
        store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
        store.upsert_unit(UnitRecord(unit_id="u1", venue_id="cho-pleiku"))
        fill(store, {"recent": now - timedelta(days=2), "old": now - timedelta(days=10)})
    assert main(["purge", "--db", path, "--retention-days", "5"]) == 0
    assert ": 1 scans, 1 dead letters, 1 batch ids" in capsys.readouterr().out
    assert remaining(path)["scans"] == ["scan-recent"]
