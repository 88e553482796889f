"""The hub settles every message it is given: a store failure holds a message back, and
only that; a message the store keeps failing on while it takes others is poison.

A real Mosquitto and the real `HubService`; the store is a real one, with faults set on
that one object (no production class carries them), as `tests/fault_hub.py` does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from doorscan.localbroker import LocalBroker
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    Ack,
    Scan,
    ScanBatch,
    UnitRecord,
    UnitStatus,
    VenueRecord,
    decode_message,
    encode_message,
    topic_ack,
    topic_scans,
    topic_status,
)
from hub.ingest import Ingestor
from hub.service import HubService
from hub.store import HubStore
from tests.hubstore import open_store
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

DAY = datetime(2022, 1, 10, 1, 0, tzinfo=UTC)
PEOPLE = make_people(10, seed=83)


def _hub(store: HubStore, broker: LocalBroker, client_id: str) -> HubService:
    """The real service, trying again quickly and giving up after 3 attempts."""
    return HubService(
        Ingestor(store),
        broker.host,
        broker.port,
        client_id=client_id,
        max_attempts=3,
        retry_delays_s=(0.05, 0.1, 0.2),
    )


class Unit:
    """A plain paho client as a door unit: publishes batches, collects its acks."""

    def __init__(self, broker: LocalBroker, unit_id: str) -> None:
        self.unit_id = unit_id
        self.acks: list[Ack] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=unit_id
        )
        self.client.on_message = lambda c, u, m: self.acks.append(
            decode_message(bytes(m.payload), Ack)
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topic_ack(unit_id), qos=1)
        time.sleep(0.2)
        self.sent = 0

    def send(self) -> str:
        self.sent += 1
        scan_id = f"{self.unit_id}-{self.sent:04d}"
        scan = Scan(
            scan_id=scan_id,
            venue_id="hospital",
            scanned_at=DAY,
            qr_text=cccd_text(PEOPLE[self.sent % 10]),
        )
        batch = ScanBatch(
            batch_id=f"b-{scan_id}", unit_id=self.unit_id, sent_at=DAY, scans=[scan], rev=6
        )
        self.client.publish(topic_scans(self.unit_id), encode_message(batch), qos=1)
        return scan_id

    def stored(self) -> set[str]:
        return {scan_id for ack in list(self.acks) for scan_id in ack.stored}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    with open_store(hub_db) as opened:
        opened.upsert_venue(VenueRecord(venue_id="hospital", name="H"))
        for unit in ("door-1", "door-2"):
            opened.upsert_unit(UnitRecord(unit_id=unit, venue_id="hospital"))
        yield opened


def _fail_when(store: HubStore, method: str, fails: Any) -> list[int]:
    """Make `store.<method>` raise while `fails(*args)`; returns a list counting the calls."""
    real = getattr(store, method)
    calls: list[int] = []

    def faulty(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if fails(*args, **kwargs):
            raise OSError("disk I/O error (injected)")
        return real(*args, **kwargs)

    setattr(store, method, faulty)
    return calls


def test_a_message_the_store_always_fails_on_is_poison_and_the_rest_flow(
    broker: LocalBroker, store: HubStore, tmp_path: Path
) -> None:
    status = UnitStatus(unit_id="door-1", online=True, software="poison")
    calls = _fail_when(
        store, "upsert_unit_status", lambda unit_id, at, online, text, **_: "poison" in text
    )
    healthy = UnitStatus(unit_id="door-2", online=True, software="1.0")
    with _hub(store, broker, "hub-p") as hub:
        assert hub.wait_connected(10)
        door = Unit(broker, "door-2")
        publisher = Unit(broker, "door-1")
        try:
            publisher.client.publish(topic_status("door-1"), encode_message(status), qos=1)
            sent = {door.send() for _ in range(3)}
            assert wait_for(lambda: door.stored() == sent, 10)
            # Another status is stored, so the store works: the failing one is poison.
            publisher.client.publish(topic_status("door-2"), encode_message(healthy), qos=1)
            assert wait_for(lambda: [d.code for d in store.dead_letters()] == ["poison"], 10)
            assert wait_for(lambda: hub.waiting() == 0, 5)
        finally:
            door.close()
            publisher.close()
    tried = len(calls)
    [letter] = store.dead_letters()
    assert letter.topic == topic_status("door-1") and letter.payload == encode_message(status)
    assert "failed 3 times" in letter.reason
    # It was settled: the hub's persistent session does not get it again.
    with _hub(store, broker, "hub-p") as hub:
        assert hub.wait_connected(10)
        time.sleep(1.0)
    assert len(calls) == tried


def test_a_store_that_is_down_holds_everything_back_and_loses_nothing(
    broker: LocalBroker, store: HubStore
) -> None:
    down = threading.Event()
    down.set()
    for method in ("insert_scans", "insert_batches", "add_dead_letter", "upsert_unit_status"):
        _fail_when(store, method, lambda *args, **kwargs: down.is_set())
    with _hub(store, broker, "hub-d") as hub:
        assert hub.wait_connected(10)
        units = [Unit(broker, "door-1"), Unit(broker, "door-2")]
        try:
            sent = {unit.unit_id: {unit.send() for _ in range(4)} for unit in units}
            assert wait_for(lambda: hub.waiting() == 8, 10)
            time.sleep(1.0)  # many retries, all failing: no ack, no poison
            assert all(unit.acks == [] for unit in units)
            down.clear()
            assert wait_for(lambda: all(u.stored() == sent[u.unit_id] for u in units), 15)
        finally:
            for unit in units:
                unit.close()
    assert store.dead_letters() == [] and store.counts()["scans"] == 8
