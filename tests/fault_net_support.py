"""Helpers for tests/test_fault_network.py: scans, a registered hub store, runners, RSS.

Kept apart so the test file reads as the faults it injects. Nothing here fakes a
component: the store is a real store of the test's backend (`hub_db`), the syncs real
MqttSyncs, the runners (tests/fault_hub.py, tests/drain_unit.py) real processes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from device.config import BrokerConfig, SyncConfig
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import cccd_text, make_people
from doorscan.timefmt import to_ms
from doorscan.wire import Scan, UnitRecord, VenueRecord
from hub.store import HubStore
from hub.store.factory import is_postgres
from tests.hubstore import open_store, vault_key_file
from tests.waiting import wait_for

__all__ = [
    "PEOPLE",
    "ROOT",
    "now",
    "FAST_DOORS",
    "make_scan",
    "wait_for",
    "registered_store",
    "make_sync",
    "stored_ids",
    "replays_only",
    "figures",
    "figure_name",
    "start_fault_hub",
    "offline_backlog",
    "drain_in_subprocess",
]

FAST_DOORS = ("--max-scans-per-minute", "0")
"""`hub serve` options for a fault test: its units scan far faster than any door can, so
the hub's rate bound (`hub.history`) is off; the bound has tests of its own."""

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = make_people(60, seed=23)


def now() -> datetime:
    # Journal and wire keep milliseconds; the hub refuses scans from the future, so
    # every scan time is taken from the real clock, in the past.
    real = datetime.now(UTC)
    return real.replace(microsecond=real.microsecond // 1000 * 1000)


def make_scan(unit_id: str, venue_id: str, i: int, at: datetime, person: int | None = None) -> Scan:
    return Scan(
        scan_id=f"{unit_id}-{i:06d}",
        venue_id=venue_id,
        scanned_at=at,
        qr_text=cccd_text(PEOPLE[(i if person is None else person) % len(PEOPLE)]),
    )


@contextmanager
def registered_store(db: str, units: dict[str, str]) -> Iterator[HubStore]:
    with open_store(db) as store:
        for venue in sorted(set(units.values())):
            store.upsert_venue(VenueRecord(venue_id=venue, name=f"Venue {venue}"))
        for unit, venue in units.items():
            store.upsert_unit(UnitRecord(unit_id=unit, venue_id=venue))
        yield store


def make_sync(
    unit_id: str, journal: ScanJournal, broker: LocalBroker, batch_size: int, ack_timeout_s: float
) -> MqttSync:
    config = SyncConfig(
        batch_size=batch_size, ack_timeout_s=ack_timeout_s, reconnect_min_s=1, reconnect_max_s=2
    )
    return MqttSync(unit_id, journal, BrokerConfig(host=broker.host, port=broker.port), config)


def stored_ids(store: HubStore, venues: set[str]) -> list[str]:
    return [c.scan_id for v in sorted(venues) for c in store.checkins_at(v, 0, 2**62)]


def replays_only(store: HubStore) -> int:
    """Dead letters after a fault may only be batches redelivered whole; return how many."""
    letters = store.dead_letters(100_000)
    assert {d.code for d in letters} <= {"replayed_batch"}, [(d.code, d.reason) for d in letters]
    return len(letters)


def figure_name(name: str, db: str) -> str:
    """The name a test's figures go under: a PostgreSQL run is a row of its own."""
    return f"{name}, PostgreSQL" if is_postgres(db) else name


def figures(request: pytest.FixtureRequest, name: str, **figures: int | float | str) -> None:
    # The recorder belongs to the reliability docs; without it the figures are only printed.
    print(f"{name}: {json.dumps(figures, sort_keys=True)}")
    try:
        recorder = request.getfixturevalue("reliability_figures")
    except pytest.FixtureLookupError:
        return
    recorder.record(name, **figures)


def start_fault_hub(
    db: str, broker: LocalBroker, when: str, die_at: int, log: Path
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tests.fault_hub", "--db", db]
    args += ["--vault-key", str(vault_key_file())]
    args += ["--broker-port", str(broker.port), "--die-at", str(die_at), "--when", when]
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if not wait_for(lambda: "hub ready" in log.read_text() or proc.poll() is not None, 30):
        proc.kill()
    assert "hub ready" in log.read_text(), log.read_text()
    return proc


def offline_backlog(path: Path, unit_id: str, venue_id: str, count: int) -> list[Scan]:
    """A journal holding `count` scans spread over the last 48 h, none sent yet.

    `record()` commits and fsyncs each scan (about 1.4 ms here: 55 000 scans would
    take over a minute), so only the first 100 go through it; the rest are inserted
    in one transaction, with the same columns `record()` writes, into the table the
    journal itself created. Reading them back through `pending()` (below) proves the
    shortcut wrote what `record()` would have.
    """
    start = now() - timedelta(hours=48)
    step_ms = 48 * 3600 * 1000 // count
    scans = [
        make_scan(unit_id, venue_id, i, start + timedelta(milliseconds=i * step_ms))
        for i in range(count)
    ]
    by_api = 100
    with ScanJournal(path) as journal:
        for scan in scans[:by_api]:
            journal.record(scan)
    rows = [
        (s.scan_id, s.venue_id, to_ms(s.scanned_at), int(s.clock_trusted), s.qr_text)
        for s in scans[by_api:]
    ]
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO scans (scan_id, venue_id, scanned_at_ms, clock_trusted, qr_text)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
    finally:
        conn.close()
    with ScanJournal(path) as journal:
        assert journal.backlog() == count
        assert journal.pending(by_api + 50) == scans[: by_api + 50]
    return scans


def vm_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def drain_in_subprocess(
    journal: Path, unit_id: str, broker: LocalBroker, batch_size: int, log: Path
) -> tuple[dict[str, Any], int, int]:
    """Run tests/drain_unit.py; return its report, peak sampled VmRSS and VmHWM (KiB)."""
    args = [sys.executable, "-m", "tests.drain_unit", "--journal", str(journal)]
    args += ["--unit-id", unit_id, "--broker-port", str(broker.port)]
    args += ["--batch-size", str(batch_size)]
    with log.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, text=True)
    peak_rss = peak_hwm = 0
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        peak_rss = max(peak_rss, vm_kib(proc.pid, "VmRSS") or 0)
        peak_hwm = max(peak_hwm, vm_kib(proc.pid, "VmHWM") or 0)
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, log.read_text())
    return json.loads(out.strip().splitlines()[-1]), peak_rss, peak_hwm
