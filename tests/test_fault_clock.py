"""A Pi with no real-time clock: a stale clock at boot, then a year forward and an hour back.

Debounce and timeouts run on the monotonic clock, so the jumps do not matter to them.
Scans taken before anyone vouched for the time are flagged and carry their boot id and
monotonic reading; the hub dates them from its own clock when they arrive, and the
unit takes the hub's time from the first ack, after which a jump of the system clock
changes nothing. A scan dated in the future beyond the tolerance is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device.clock import ManualClock, UnitClock
from device.config import BrokerConfig, SyncConfig, UnitConfig
from device.indicators import Feedback
from device.unit import Unit
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import blank_frame, cccd_text, make_people, render_frame
from doorscan.wire import UnitRecord, VenueRecord
from hub.ingest import Ingestor
from hub.service import HubService
from tests.fault_net_support import figure_name
from tests.hubdb import raw_sql
from tests.hubstore import open_store
from tests.reliability import FiguresRecorder
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

PEOPLE = make_people(6, seed=53)
SLACK = timedelta(seconds=15)  # network and processing delay between the unit and the hub


@pytest.fixture
def hub(broker: LocalBroker, hub_db: str) -> Iterator[tuple[str, HubService]]:
    db = hub_db
    with open_store(db) as store:
        store.upsert_venue(VenueRecord(venue_id="hospital", name="Hospital"))
        for unit_id in ("door-1", "door-2"):
            store.upsert_unit(UnitRecord(unit_id=unit_id, venue_id="hospital"))
        with HubService(Ingestor(store), broker.host, broker.port) as service:
            assert service.wait_connected(10)
            yield db, service


def _unit(
    broker: LocalBroker, tmp_path: Path, unit_id: str, clock: ManualClock | UnitClock
) -> Unit:
    config = UnitConfig(
        unit_id=unit_id,
        venue_id="hospital",
        data_dir=tmp_path / unit_id,
        debounce_s=300,
        broker=BrokerConfig(host=broker.host, port=broker.port),
        sync=SyncConfig(ack_timeout_s=30),
    )
    # The same clock for scans and sending: the hub compares their monotonic readings.
    return Unit(config, clock=clock, sync_clock=clock, pin_factory=MockFactory())


def _show(unit: Unit, base: ManualClock, text: str, after_s: float) -> list[Feedback]:
    base.advance(after_s)
    feedback = [o.feedback for o in unit.scanner.process(render_frame(text))]
    base.advance(1)
    unit.scanner.process(blank_frame())
    return feedback


def _stored(db: str) -> dict[str, tuple[datetime, bool]]:
    rows = raw_sql(db, "SELECT scan_id, scanned_at_ms, clock_trusted FROM scans")
    return {sid: (datetime.fromtimestamp(ms / 1000, UTC), bool(t)) for sid, ms, t in rows}


def test_stale_then_jumping_clock(
    broker: LocalBroker,
    hub: tuple[str, HubService],
    tmp_path: Path,
    reliability_figures: FiguresRecorder,
) -> None:
    db, service = hub
    base = ManualClock(datetime.now(UTC) - timedelta(days=400))  # the time it was switched off
    clock = UnitClock(base, ntp_synced=lambda: False)
    unit = _unit(broker, tmp_path, "door-1", clock)  # not started yet: offline at first
    with closing(unit):
        a, b, c, d = (cccd_text(p) for p in PEOPLE[:4])
        assert _show(unit, base, a, 10) == [Feedback.RECORDED_OFFLINE]
        base.set_wall(base.now() + timedelta(days=365))  # the clock jumps a year forward
        assert _show(unit, base, a, 10) == [Feedback.ALREADY_IN]  # debounce is monotonic
        assert _show(unit, base, b, 10) == [Feedback.RECORDED_OFFLINE]
        base.set_wall(base.now() - timedelta(hours=1))  # and an hour back
        assert _show(unit, base, c, 10) == [Feedback.RECORDED_OFFLINE]
        flagged = unit.journal.pending(10)
        assert [s.qr_text for s in flagged] == [a, b, c]
        assert all(not s.clock_trusted and s.boot_id and s.mono_ms is not None for s in flagged)

        base.advance(20)
        # How long before sending each scan was taken, on the clock that never jumps.
        ages = {s.scan_id: base.monotonic() - (s.mono_ms or 0) / 1000 for s in flagged}
        unit.start()  # the network comes: the backlog goes out, the first ack brings the time
        assert wait_for(lambda: unit.journal.backlog() == 0 and clock.trusted())
        sent_at = datetime.now(UTC)
        stored = _stored(db)
        for scan_id, age_s in ages.items():
            at, trusted = stored[scan_id]
            # Dated by the hub: its own clock minus the age the unit measured, still flagged.
            assert not trusted
            assert abs(at - (sent_at - timedelta(seconds=age_s))) < SLACK, (scan_id, at)

        base.set_wall(base.now() - timedelta(hours=1))  # NTP is still away; the wall jumps again
        assert _show(unit, base, d, 5) == [Feedback.ACCEPTED]
        assert wait_for(lambda: unit.journal.backlog() == 0)
        d_scan = max(_stored(db).items(), key=lambda item: item[1][0])
        assert d_scan[1][1] is True  # taken with a clock the hub vouched for
        assert abs(d_scan[1][0] - datetime.now(UTC)) < SLACK

    # A unit whose clock runs a day ahead (and thinks it is right) is refused at the hub.
    ahead = ManualClock(datetime.now(UTC) + timedelta(days=1))
    with _unit(broker, tmp_path, "door-2", ahead).start() as fast:
        assert fast.sync.wait_connected(10)  # online, so the door shows plain green
        assert _show(fast, ahead, cccd_text(PEOPLE[4]), 1) == [Feedback.ACCEPTED]
        assert wait_for(lambda: fast.journal.backlog() == 0)
    with open_store(db) as store:
        letters = store.dead_letters()
        assert [letter.code for letter in letters] == ["future_time"]
        assert store.counts()["scans"] == 4
    reliability_figures.record(
        figure_name("stale clock, +1 year, -1 hour", db),
        runs=1,
        faults_injected=4,
        scans_sent=5,
        scans_stored=4,
        lost=0,
        bad_inputs_tried=1,
        bad_inputs_refused=len(letters),
    )
    assert service.failures == 0
