"""`serve --workers 2` against a real Mosquitto: load spreads, a killed worker loses nothing.

Everything is real: the supervisor and its two workers are `python -m hub serve`
processes (`hub.launcher.HubProcess`), the units are production `MqttSync`s draining
SQLite journals, the store is the `hub_db` backend. Which worker stored what is read
from the workers' own "counters" lines (``--report-every-s``), which is what an
operator sees in the hub's log; the fault is a SIGKILL to one worker's pid, taken from
the supervisor's "started" line.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import threading
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import pytest

from device.journal import ScanJournal
from doorscan.localbroker import LocalBroker
from doorscan.wire import UnitRecord, VenueRecord
from hub.cli import main
from hub.launcher import HubProcess
from hub.workers import EXIT_REFUSED, WorkerPool
from tests.fault_net_support import make_scan, make_sync, now, replays_only
from tests.hubstore import open_store, vault_key_file
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

UNITS = {"door-a": "hospital", "door-b": "market"}
_STARTED = re.compile(r"^hub worker (\d+) started: pid (\d+)$", re.MULTILINE)
_COUNTERS = re.compile(r"^hub worker (\d+) (?:counters|stopped): (\{.*\})$", re.MULTILINE)


def _register(hub_db: str) -> None:
    with open_store(hub_db) as store:
        for venue in sorted(set(UNITS.values())):
            store.upsert_venue(VenueRecord(venue_id=venue, name=f"Venue {venue}"))
        for unit, venue in UNITS.items():
            store.upsert_unit(UnitRecord(unit_id=unit, venue_id=venue))


def _start_hub(hub_db: str, broker: LocalBroker, log: Path) -> HubProcess:
    return HubProcess(
        hub_db,
        broker.host,
        broker.port,
        log,
        vault_key=vault_key_file(),
        workers=2,
        extra_args=["--report-every-s", "0.2"],
    )


def _pids(output: str) -> dict[int, list[int]]:
    """Each worker's pids, oldest first (a restart adds one)."""
    pids: dict[int, list[int]] = {}
    for index, pid in _STARTED.findall(output):
        pids.setdefault(int(index), []).append(int(pid))
    return pids


def _stored(output: str) -> dict[int, list[int]]:
    """Each worker's reported scans_stored, in the order of its lines (one per process
    life: the count starts again at 0 when the supervisor restarts the worker)."""
    stored: dict[int, list[int]] = {}
    for index, counters in _COUNTERS.findall(output):
        stored.setdefault(int(index), []).append(json.loads(counters)["scans_stored"])
    return stored


def _latest(output: str, index: int) -> int:
    return _stored(output).get(index, [0])[-1]


@pytest.mark.slow
def test_two_workers_share_the_scans_and_a_killed_one_loses_nothing(
    broker: LocalBroker, hub_db: str, tmp_path: Path
) -> None:
    per_unit = {"before": 200, "during": 150, "after": 150}
    total = sum(per_unit.values()) * len(UNITS)
    t0 = now() - timedelta(hours=1)
    recorded = dict.fromkeys(UNITS, 0)
    _register(hub_db)
    hub = _start_hub(hub_db, broker, tmp_path / "hub.log")
    try:
        with ExitStack() as stack:
            journals = {u: stack.enter_context(ScanJournal(tmp_path / f"{u}.db")) for u in UNITS}
            syncs = {
                u: stack.enter_context(make_sync(u, journals[u], broker, 10, 3.0)) for u in UNITS
            }

            def record(count: int) -> None:
                for _ in range(count):
                    for unit, journal in journals.items():
                        i = recorded[unit]
                        recorded[unit] += 1
                        journal.record(make_scan(unit, UNITS[unit], i, t0 + timedelta(seconds=i)))
                        syncs[unit].notify()

            record(per_unit["before"])
            # Both workers take a share before anything goes wrong.
            assert wait_for(lambda: all(_latest(hub.output(), k) > 0 for k in (1, 2)), 60), (
                hub.output()
            )
            # The kill lands mid-stream: one thread keeps the doors scanning meanwhile.
            streaming = threading.Thread(target=record, args=(per_unit["during"],))
            streaming.start()
            at_kill = hub.output()
            backlog_at_kill = sum(j.backlog() for j in journals.values())
            victim = _pids(at_kill)[1][-1]
            os.kill(victim, signal.SIGKILL)
            streaming.join()
            record(per_unit["after"])
            drained = wait_for(lambda: all(j.backlog() == 0 for j in journals.values()), 120)
            assert drained, ({u: j.backlog() for u, j in journals.items()}, hub.output())
            # The supervisor brought the killed worker back (then both stop cleanly).
            assert wait_for(lambda: hub.output().count("hub worker 1 ready") == 2, 60), hub.output()
            batches_sent = sum(s.batches_sent for s in syncs.values())
            acks_received = sum(s.acks_received for s in syncs.values())
    finally:
        code = hub.stop()
    output = hub.output()
    assert code == 0, output
    assert "Traceback" not in output, output
    assert f"(pid {victim}) ended with signal SIGKILL" in output, output
    # SIGTERM reached both workers through the supervisor, and each stopped cleanly.
    assert "hub worker 1 stopped:" in output and "hub worker 2 stopped:" in output

    expected = {f"{u}-{i:06d}" for u, n in recorded.items() for i in range(n)}
    assert len(expected) == total
    with open_store(hub_db) as store:
        rows = [
            c.scan_id for v in sorted(set(UNITS.values())) for c in store.checkins_at(v, 0, 2**62)
        ]
        scans_in_store = store.counts()["scans"]
        replays_only(store)
    # Every journaled scan once: no loss, no copy.
    assert scans_in_store == total and len(rows) == total and set(rows) == expected
    # The stream was still flowing when the worker died.
    assert backlog_at_kill > 0
    # The survivor kept storing after the kill (its final line is its whole life's count).
    assert _stored(output)[2][-1] > _latest(at_kill, 2), output
    print(
        "workers:",
        json.dumps(
            {
                "stored_by_worker_at_kill": {k: _latest(at_kill, k) for k in (1, 2)},
                "stored_by_worker_at_end": {k: v[-1] for k, v in _stored(output).items()},
                "backlog_at_kill": backlog_at_kill,
                "batches_sent": batches_sent,
                "batches_unacked_resent": batches_sent - acks_received,
            }
        ),
    )


def test_the_supervisor_restarts_a_killed_worker(
    broker: LocalBroker, hub_db: str, tmp_path: Path
) -> None:
    _register(hub_db)
    hub = _start_hub(hub_db, broker, tmp_path / "hub.log")
    try:
        first = _pids(hub.output())[2]
        os.kill(first[-1], signal.SIGKILL)
        assert wait_for(lambda: len(_pids(hub.output())[2]) == 2, 30), hub.output()
        replacement = _pids(hub.output())[2][-1]
        assert replacement != first[-1]
        restarted_at = hub.output().index(f"started: pid {replacement}")
        assert wait_for(lambda: "hub worker 2 ready" in hub.output()[restarted_at:], 30)
        # The new worker takes its share: scans reach it through the share group again.
        with ExitStack() as stack:
            journal = stack.enter_context(ScanJournal(tmp_path / "door-a.db"))
            sync = stack.enter_context(make_sync("door-a", journal, broker, 5, 3.0))
            t0 = now() - timedelta(hours=1)
            for i in range(100):
                journal.record(make_scan("door-a", "hospital", i, t0 + timedelta(seconds=i)))
                sync.notify()
            assert wait_for(lambda: journal.backlog() == 0, 60), hub.output()
            assert wait_for(lambda: _latest(hub.output()[restarted_at:], 2) > 0, 10), hub.output()
    finally:
        code = hub.stop()
    output = hub.output()
    assert code == 0, output
    assert f"(pid {first[-1]}) ended with signal SIGKILL" in output
    assert "hub stopped: workers=2 restarts=1" in output
    with open_store(hub_db) as store:
        assert store.counts()["scans"] == 100


def test_a_worker_that_keeps_dying_young_is_restarted_ever_more_slowly() -> None:
    """A real child that exits at once (a worker whose database is down, say)."""
    out = io.StringIO()
    pool = WorkerPool(
        lambda index: [sys.executable, "-c", "raise SystemExit(3)"],
        1,
        out=out,
        backoff_min_s=0.05,
        backoff_max_s=0.2,
        stable_s=60,
    )
    stop = threading.Event()
    announced: list[bool] = []
    runner = threading.Thread(target=pool.run, args=(stop, lambda: announced.append(True)))
    runner.start()
    try:
        assert wait_for(lambda: pool.restarts >= 4, 30), out.getvalue()
    finally:
        stop.set()
        runner.join(30)
    delays = re.findall(
        r"ended with exit code 3 after [0-9.]+ s; restarting in ([0-9.]+) s", out.getvalue()
    )
    assert delays[:4] == ["0.05", "0.1", "0.2", "0.2"], out.getvalue()
    assert not announced  # never ready, so never announced as such


def test_a_worker_that_refuses_its_config_stops_the_pool_instead_of_looping() -> None:
    """Exit 2 is a refused config (keys that cannot open what the fleet sends): the one
    worker's refusal ends the pool, the healthy worker is stopped, nothing restarts."""
    out = io.StringIO()
    argv = {
        1: [sys.executable, "-c", "import time; time.sleep(60)"],
        2: [sys.executable, "-c", f"raise SystemExit({EXIT_REFUSED})"],
    }
    pool = WorkerPool(lambda index: argv[index], 2, out=out, backoff_min_s=0.05)
    assert pool.run(threading.Event(), lambda: None) == EXIT_REFUSED
    assert pool.restarts == 0
    assert f"hub worker 2 refused to run (exit {EXIT_REFUSED}); stopping all" in out.getvalue()


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        (["--http", "127.0.0.1:8080"], "--http runs in one process"),
        (["--ca-file", "ca.pem", "--cert-file", "c.pem", "--key-file", "k.pem"], "certificate"),
        (["--workers", "0"], "not a number of workers"),
    ],
)
def test_what_workers_cannot_do_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], refusal: str
) -> None:
    db = tmp_path / "hub.db"
    args = ["serve", "--db", str(db), "--workers", "2", "--broker-host", "127.0.0.1", *extra]
    assert main(args) == 2
    assert refusal in capsys.readouterr().err
    assert not db.exists()
