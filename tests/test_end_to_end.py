"""The whole path on real parts: QR frame -> unit journal -> Mosquitto -> hub store -> trace.

The broker is a real Mosquitto on a free port, the hub runs as its own process
(`python -m hub serve`), the units are real `Unit`s (real decoder, SQLite journal,
gpiozero mock pins, paho) driven frame by frame with a hand-moved scan clock, and the
answer comes from `python -m hub trace`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from device.clock import ManualClock
from device.config import BrokerConfig, FramesConfig, SyncConfig, UnitConfig
from device.indicators import Feedback
from device.unit import Unit
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import blank_frame, cccd_text, health_text, make_people, render_frame
from doorscan.wire import (
    Ack,
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
    topic_ack,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
)
from hub.launcher import HubProcess
from tests.hubstore import vault_key_file
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

DAY = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)  # 08:00 in Vietnam
CLOCKS: dict[str, ManualClock] = {}  # each unit's hand-moved clock, by unit id


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)


def _publish_registry(broker: LocalBroker, venues: list[str], units: dict[str, str]) -> None:
    client = _client("test-provisioning")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for venue in venues:
            venue_record = VenueRecord(venue_id=venue, name=f"Venue {venue}")
            client.publish(
                topic_registry_venue(venue), encode_message(venue_record), qos=1, retain=True
            ).wait_for_publish(5)
        for unit, venue in units.items():
            unit_record = UnitRecord(unit_id=unit, venue_id=venue)
            client.publish(
                topic_registry_unit(unit), encode_message(unit_record), qos=1, retain=True
            ).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture
def hub(broker: LocalBroker, hub_db: str, tmp_path: Path) -> Iterator[str]:
    """`python -m hub serve` on the test broker; yields its database (`hub_db`)."""
    db = hub_db
    hub = HubProcess(db, broker.host, broker.port, tmp_path / "hub.log", vault_key=vault_key_file())
    yield db
    assert hub.stop() == 0, hub.output()
    assert "Traceback" not in hub.output(), hub.output()


def _hub(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hub", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _unit(broker: LocalBroker, tmp_path: Path, unit_id: str, venue_id: str, decoder: str) -> Unit:
    config = UnitConfig(
        unit_id=unit_id,
        venue_id=venue_id,
        data_dir=tmp_path / unit_id,
        decoder=decoder,
        debounce_s=600,
        broker=BrokerConfig(host=broker.host, port=broker.port),
        frames=FramesConfig(source="files", path=tmp_path),
        sync=SyncConfig(batch_size=3, ack_timeout_s=5),
    )
    clock = ManualClock(DAY)
    unit = Unit(config, clock=clock, pin_factory=MockFactory())
    CLOCKS[unit_id] = clock
    return unit


def test_scans_at_two_doors_come_out_of_hub_trace(
    broker: LocalBroker, hub: str, tmp_path: Path
) -> None:
    _publish_registry(broker, ["hospital", "market"], {"door-h": "hospital", "door-m": "market"})
    people = make_people(8, seed=5)
    index, f1, f2, stranger = people[0], people[1], people[2], people[3]
    with (
        _unit(broker, tmp_path, "door-h", "hospital", "zxing").start() as hospital,
        _unit(broker, tmp_path, "door-m", "market", "zbar").start() as market,
    ):
        assert hospital.sync.wait_connected(10) and market.sync.wait_connected(10)

        def show(unit: Unit, text: str, minutes_later: float) -> list[Feedback]:
            clock = CLOCKS[unit.config.unit_id]
            clock.advance(minutes_later * 60)
            feedback = [o.feedback for o in unit.scanner.process(render_frame(text))]
            clock.advance(5)
            unit.scanner.process(blank_frame())
            return feedback

        assert show(hospital, cccd_text(index), 0) == [Feedback.ACCEPTED]
        assert show(hospital, health_text(f1), 30) == [Feedback.ACCEPTED]  # F1: 30 min later
        assert show(hospital, cccd_text(f1), 1) == [Feedback.ALREADY_IN]  # same person, 2nd code
        assert show(hospital, "not an id", 1) == [Feedback.REFUSED]
        assert show(market, cccd_text(stranger), 60) == [Feedback.ACCEPTED]  # before f1 comes
        assert show(market, cccd_text(f1), 120) == [Feedback.ACCEPTED]
        assert show(market, cccd_text(f2), 45) == [Feedback.ACCEPTED]  # F2 through f1

        assert wait_for(lambda: hospital.journal.backlog() == 0 and market.journal.backlog() == 0)

    stats = json.loads(_hub("stats", "--db", hub))
    assert stats["scans"] == 5 and stats["dead_letters"] == 0
    since, until = (DAY - timedelta(hours=1)).isoformat(), (DAY + timedelta(hours=8)).isoformat()
    out = _hub(
        "trace", "--db", hub, "--id", index.id_number, "--since", since, "--until", until,
        "--window-minutes", "60", "--depth", "2", "--reason", "CASE-42", "--format", "json",
    )  # fmt: skip
    result = json.loads(out)
    found = {c["id_number"]: (c["degree"], c["venue_id"], c["via"]) for c in result["contacts"]}
    # The stranger was at the market 2.5 h before f1 arrived there: no contact.
    assert found == {
        f1.id_number: (1, "hospital", index.id_number),
        f2.id_number: (2, "market", f1.id_number),
    }


def test_a_resent_batch_is_stored_once_and_acked_twice(broker: LocalBroker, hub: str) -> None:
    _publish_registry(broker, ["hospital"], {"door-h": "hospital"})
    people = make_people(3, seed=9)
    scans = [
        Scan(scan_id=f"scan-{i:04d}", venue_id="hospital", scanned_at=DAY, qr_text=cccd_text(p))
        for i, p in enumerate(people)
    ]
    batch = ScanBatch(batch_id="batch-0001", unit_id="door-h", sent_at=DAY, scans=scans)
    acks: list[Ack] = []
    client = _client("door-h")
    client.on_message = lambda c, u, m: acks.append(decode_message(bytes(m.payload), Ack))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe(topic_ack("door-h"), qos=1)
        time.sleep(0.2)
        for _ in range(2):
            client.publish(topic_scans("door-h"), encode_message(batch), qos=1).wait_for_publish(5)
        assert wait_for(lambda: len(acks) == 2)
    finally:
        client.loop_stop()
        client.disconnect()
    assert all(sorted(a.stored) == sorted(s.scan_id for s in scans) for a in acks)
    assert json.loads(_hub("stats", "--db", hub))["scans"] == 3
