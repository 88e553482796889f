"""Faults across the network: the broker and the hub die, a unit comes back after 48 h.

Everything is real (Mosquitto with persistence off, paho, SQLite journals, the hub
store of each backend (`hub_db`), `HubService` + `Ingestor`); only the faults are test
code: `broker.kill()` (SIGKILL), and tests/fault_hub.py, a real hub whose store calls
`os._exit(137)` just before or just after its Nth commit. The promise under test: every
scan a journal recorded ends in the hub exactly once, however often it travelled.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from device.journal import ScanJournal
from device.mqtt_sync import MqttSync
from doorscan.localbroker import LocalBroker
from doorscan.wire import Scan
from hub.ingest import Ingestor
from hub.launcher import HubProcess
from hub.service import HubService
from hub.store.factory import is_postgres
from tests.access_data import traced
from tests.fault_net_support import (
    FAST_DOORS,
    PEOPLE,
    drain_in_subprocess,
    figure_name,
    figures,
    make_scan,
    make_sync,
    now,
    offline_backlog,
    registered_store,
    replays_only,
    start_fault_hub,
    stored_ids,
    wait_for,
)
from tests.hubdb import pg_schema_url, raw_sql
from tests.hubstore import open_store, vault_key_file

pytestmark = pytest.mark.broker

# -- 1. the broker dies mid-stream --------------------------------------------------------


@pytest.mark.slow
def test_broker_sigkilled_mid_10000_scans_loses_and_doubles_nothing(
    broker: LocalBroker, hub_db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    units = {"door-a": "hospital", "door-b": "market", "door-c": "school"}
    total = 10_000
    # Recording phases: streaming (the kill comes during it), outage, after the restart.
    phases = [4_000, 3_000, 3_000]
    t0 = now() - timedelta(hours=1)
    started = time.monotonic()
    recorded = {u: 0 for u in units}
    lock = threading.Lock()

    def record_phase(journals: dict[str, ScanJournal], syncs: dict[str, MqttSync], n: int) -> None:
        def one_unit(unit: str, count: int) -> None:
            for _ in range(count):
                with lock:
                    i = recorded[unit]
                    recorded[unit] += 1
                journals[unit].record(
                    make_scan(unit, units[unit], i, t0 + timedelta(milliseconds=300 * i))
                )
                if i % 25 == 0:
                    syncs[unit].notify()
            syncs[unit].notify()

        names = sorted(units)
        shares = [n // len(names) + (1 if k < n % len(names) else 0) for k in range(len(names))]
        threads = [
            threading.Thread(target=one_unit, args=(u, c))
            for u, c in zip(names, shares, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    with ExitStack() as stack:
        store = stack.enter_context(registered_store(hub_db, units))
        ingestor = Ingestor(store, max_scans_per_minute=0)
        hub = stack.enter_context(HubService(ingestor, broker.host, broker.port))
        assert hub.wait_connected(10)
        journals = {u: stack.enter_context(ScanJournal(tmp_path / f"{u}.db")) for u in units}
        syncs = {u: stack.enter_context(make_sync(u, journals[u], broker, 50, 3.0)) for u in units}
        assert all(s.wait_connected(10) for s in syncs.values())

        streaming = threading.Thread(target=record_phase, args=(journals, syncs, phases[0]))
        streaming.start()
        assert wait_for(lambda: ingestor.counters.scans_stored >= 1_000, 60)
        in_flight_at_kill = sum(s.in_flight() for s in syncs.values())
        stored_at_kill = ingestor.counters.scans_stored
        with lock:
            recorded_at_kill = sum(recorded.values())
        broker.kill()  # persistence off: every queued and in-flight message is gone
        assert wait_for(lambda: not any(s.online for s in syncs.values()), 10)
        streaming.join()
        record_phase(journals, syncs, phases[1])  # the door keeps scanning, offline
        recorded_while_down = sum(recorded.values()) - recorded_at_kill
        backlog_at_restart = sum(j.backlog() for j in journals.values())
        broker.start()
        record_phase(journals, syncs, phases[2])
        assert wait_for(lambda: all(j.backlog() == 0 for j in journals.values()), 120), {
            u: j.backlog() for u, j in journals.items()
        }
        batches_sent = sum(s.batches_sent for s in syncs.values())
        acks_received = sum(s.acks_received for s in syncs.values())

    expected = {f"{u}-{i:06d}" for u, n in recorded.items() for i in range(n)}
    assert len(expected) == total
    with open_store(hub_db) as reopened:
        stored = stored_ids(reopened, set(units.values()))
        replays = replays_only(reopened)
    assert len(stored) == total and set(stored) == expected
    assert ingestor.counters.scans_stored == total
    # The fault was real: it struck with work left, and the doors kept recording.
    assert stored_at_kill < total and backlog_at_restart > 0
    assert recorded_while_down >= phases[1]
    figures(
        request,
        figure_name("broker SIGKILLed mid-stream (10 000 scans, 3 units)", hub_db),
        runs=1,
        faults_injected=1,
        scans_sent=total,
        scans_stored=len(stored),
        lost=len(expected - set(stored)),
        duplicates_absorbed=ingestor.counters.scans_duplicate,
        seconds=round(time.monotonic() - started, 1),
        batches_sent=batches_sent,
        batches_unacked_resent=batches_sent - acks_received,
        scans_in_flight_at_kill=in_flight_at_kill,
        backlog_at_restart=backlog_at_restart,
        recorded_while_broker_down=recorded_while_down,
        batches_replayed=replays,
    )


# -- 2. the hub dies just before / just after its commit ----------------------------------

BATCH = 50
DIE_AT = 4


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_hub_killed_around_its_commit_loses_and_doubles_nothing(
    broker: LocalBroker, hub_db: str, tmp_path: Path, request: pytest.FixtureRequest, when: str
) -> None:
    units = {"door-a": "hospital", "door-b": "market", "door-c": "school"}
    db = hub_db
    started = time.monotonic()
    t0 = now() - timedelta(hours=2)
    with registered_store(db, units):
        pass
    fault_hub = start_fault_hub(db, broker, when, DIE_AT, tmp_path / "fault-hub.log")
    try:
        with ExitStack() as stack:
            journals = {u: stack.enter_context(ScanJournal(tmp_path / f"{u}.db")) for u in units}
            for unit, journal in journals.items():
                for i in range(300):
                    journal.record(make_scan(unit, units[unit], i, t0 + timedelta(seconds=i)))
            syncs = {
                u: stack.enter_context(make_sync(u, journals[u], broker, BATCH, 3.0)) for u in units
            }
            assert fault_hub.wait(60) == 137, (tmp_path / "fault-hub.log").read_text()
            with open_store(db) as dead_hubs_store:
                committed_at_death = dead_hubs_store.counts()["scans"]
            for unit, journal in journals.items():  # the doors keep scanning with no hub
                for i in range(300, 400):
                    journal.record(make_scan(unit, units[unit], i, t0 + timedelta(seconds=i)))
                syncs[unit].notify()
            hub = HubProcess(
                db,
                broker.host,
                broker.port,
                tmp_path / "hub.log",
                vault_key=vault_key_file(),
                extra_args=FAST_DOORS,
            )
            try:
                drained = wait_for(lambda: all(j.backlog() == 0 for j in journals.values()), 90)
            finally:
                assert hub.stop() == 0, hub.output()
            assert drained, {u: j.backlog() for u, j in journals.items()}
            batches_sent = sum(s.batches_sent for s in syncs.values())
    finally:
        if fault_hub.poll() is None:
            fault_hub.kill()
            fault_hub.wait()
    assert "Traceback" not in hub.output(), hub.output()
    match = re.search(r"hub stopped: (\{.*\})", hub.output())
    assert match, hub.output()
    counters = json.loads(match.group(1))

    # The fault struck where it was aimed: N-1 or N whole commits, no more (a commit
    # holds every batch that arrived together; the fault hub said how many each held).
    held = {
        int(number): int(batches)
        for number, batches in re.findall(
            r"fault hub: commit (\d+) holds (\d+) batches", (tmp_path / "fault-hub.log").read_text()
        )
    }
    whole_commits = range(1, DIE_AT if when == "before" else DIE_AT + 1)
    assert committed_at_death == BATCH * sum(held[n] for n in whole_commits)
    expected = {f"{u}-{i:06d}" for u in units for i in range(400)}
    with open_store(db) as store:
        stored = stored_ids(store, set(units.values()))
        replays = replays_only(store)
    assert len(stored) == len(expected) and set(stored) == expected
    assert counters["scans_stored"] == len(expected) - committed_at_death
    if when == "after":
        # That batch was committed but never acked: it must come again, and be absorbed.
        assert counters["scans_duplicate"] >= BATCH
    figures(
        request,
        figure_name(f"hub killed {when} its commit", db),
        runs=1,
        faults_injected=1,
        scans_sent=len(expected),
        scans_stored=len(stored),
        lost=len(expected - set(stored)),
        duplicates_absorbed=counters["scans_duplicate"],
        seconds=round(time.monotonic() - started, 1),
        committed_at_death=committed_at_death,
        batches_replayed=replays,
        batches_sent=batches_sent,
    )


# -- 3. a unit back after 48 h offline -------------------------------------------------------


@pytest.mark.slow
def test_48h_offline_backlog_drains_in_batches_with_bounded_memory(
    broker: LocalBroker, hub_db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    units = {"door-small": "market", "door-big": "hospital"}
    sizes = {"door-small": 5_000, "door-big": 50_000}
    batch = 250
    started = time.monotonic()
    backlogs = {u: offline_backlog(tmp_path / f"{u}.db", u, units[u], sizes[u]) for u in sizes}
    reports: dict[str, dict[str, Any]] = {}
    rss: dict[str, tuple[int, int]] = {}
    with (
        registered_store(hub_db, units) as store,
        HubService(Ingestor(store, max_scans_per_minute=0), broker.host, broker.port) as hub,
    ):
        assert hub.wait_connected(10)
        for unit in sizes:  # the small one first: its figure is the baseline
            report, peak_rss, peak_hwm = drain_in_subprocess(
                tmp_path / f"{unit}.db", unit, broker, batch, tmp_path / f"{unit}.log"
            )
            reports[unit], rss[unit] = report, (peak_rss, peak_hwm)
        counters = hub.ingestor.counters
        for unit, scans in backlogs.items():
            stored = [c.scan_id for c in store.checkins_at(units[unit], 0, 2**62)]
            assert len(stored) == len(scans) and set(stored) == {s.scan_id for s in scans}
    for unit, size in sizes.items():
        assert reports[unit]["backlog_before"] == size and reports[unit]["backlog_after"] == 0
        assert reports[unit]["batches_sent"] >= size // batch
    assert counters.scans_stored == sum(sizes.values()) and counters.dead_letters == 0
    # Ten times the backlog must not mean (much) more memory: the sync holds a few
    # batches, never the backlog. A ratio against the same script, not a fixed MB figure.
    ratio = rss["door-big"][0] / rss["door-small"][0]
    assert ratio < 1.5, rss
    figures(
        request,
        figure_name("unit back after 48 h offline (50 000-scan backlog)", hub_db),
        runs=1,
        faults_injected=1,
        scans_sent=sizes["door-big"],
        scans_stored=len(backlogs["door-big"]),
        lost=0,
        duplicates_absorbed=counters.scans_duplicate,
        seconds=round(time.monotonic() - started, 1),
        batches_sent=reports["door-big"]["batches_sent"],
        peak_rss_kib=rss["door-big"][0],
        peak_rss_kib_5000=rss["door-small"][0],
        peak_hwm_kib=rss["door-big"][1],
        peak_hwm_kib_5000=rss["door-small"][1],
        rss_ratio=round(ratio, 3),
    )


# -- 4. order of arrival ---------------------------------------------------------------------


def _deliver(
    broker: LocalBroker,
    db: str,
    tmp_path: Path,
    run: str,
    scans: dict[str, list[Scan]],
    *,
    mixed: bool,
) -> None:
    """Send `scans` through real journals, syncs and a hub storing into `db` (empty).

    In order: each unit's scans recorded oldest first, one unit drained after the other.
    Mixed: each journal recorded in a shuffled order and both units draining at once in
    small batches, so the hub sees times jump back and forth between two doors.
    """
    rng = random.Random(7)
    with (
        registered_store(db, dict.fromkeys(scans, "hospital")) as store,
        HubService(
            Ingestor(store, max_scans_per_minute=0),
            broker.host,
            broker.port,
            client_id=f"hub-{run}",
        ) as hub,
        ExitStack() as stack,
    ):
        assert hub.wait_connected(10)
        journals = {u: stack.enter_context(ScanJournal(tmp_path / f"{run}-{u}.db")) for u in scans}
        for unit, unit_scans in scans.items():
            for scan in rng.sample(unit_scans, len(unit_scans)) if mixed else unit_scans:
                journals[unit].record(scan)
        for unit in scans:
            stack.enter_context(make_sync(unit, journals[unit], broker, 7 if mixed else 50, 5.0))
            if not mixed:
                assert wait_for(lambda u=unit: journals[u].backlog() == 0, 60)  # type: ignore[misc]
        assert wait_for(lambda: all(j.backlog() == 0 for j in journals.values()), 60)


def _arrival_order(db: str) -> list[str]:
    """The scan ids in the order the hub stored them."""
    if is_postgres(db):
        # No rowid: the batch's receipt time, then the id within one batch (a batch of
        # the mixed run is a shuffled draw, so this order is still not time order).
        sql = "SELECT scan_id FROM scans ORDER BY received_at_ms, scan_id"
    else:
        sql = "SELECT scan_id FROM scans ORDER BY rowid"
    return [row[0] for row in raw_sql(db, sql)]


@pytest.mark.slow
def test_arrival_order_does_not_change_what_the_hub_knows(
    broker: LocalBroker, hub_db: str, tmp_path: Path
) -> None:
    """A unit back from days offline sends old scans after newer ones from another door.

    The hub must end with the same check-ins, and a trace must find the same contacts,
    whether the scans arrived in time order or shuffled and interleaved.
    """
    start = now() - timedelta(hours=49)  # the last scan + 20 min is still in the past
    step_ms = 48 * 3600 * 1000 // 400
    scans = {
        "door-1": [
            make_scan("door-1", "hospital", i, start + timedelta(milliseconds=i * step_ms))
            for i in range(400)
        ],
        # The second door sees other people, 20 minutes behind the first one.
        "door-2": [
            make_scan(
                "door-2",
                "hospital",
                i,
                start + timedelta(milliseconds=i * step_ms + 1_200_000),
                person=i * 7 + 3,
            )
            for i in range(400)
        ],
    }
    results = []
    with ExitStack() as databases:
        # The second run needs a database of its own, on the same backend.
        if is_postgres(hub_db):
            second = databases.enter_context(contextmanager(pg_schema_url)())
        else:
            second = str(tmp_path / "hub-mixed.db")
        for run, mixed, db in (("ordered", False, hub_db), ("mixed", True, second)):
            _deliver(broker, db, tmp_path, run, scans, mixed=mixed)
            with open_store(db) as store:
                checkins = store.checkins_at("hospital", 0, 2**62)
                trace = traced(
                    store, PEOPLE[0].id_number, start - timedelta(hours=1), now(),
                    timedelta(minutes=30), 2, "order test", now(),
                )  # fmt: skip
            results.append((checkins, trace.to_json_dict()["contacts"], _arrival_order(db)))
    (ordered, ordered_contacts, _), (mixed_checkins, mixed_contacts, mixed_arrival) = results
    assert len(ordered) == 800 and ordered == mixed_checkins
    assert ordered_contacts and ordered_contacts == mixed_contacts
    # The shuffle really reached the hub: it stored the scans out of time order.
    by_time = [c.scan_id for c in ordered]
    assert mixed_arrival != by_time and sorted(mixed_arrival) == sorted(by_time)
