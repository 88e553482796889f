"""The in-memory broker (`doorscan.mqtt_fake`) against Mosquitto, and what it makes fast.

The contract tests run the same steps on a real Mosquitto and on the fake: a fake that
behaves otherwise than the real peer would make fast tests lie. Then one test of the unit
and the hub over the fake, which needs no broker process at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from device.config import BrokerConfig, SyncConfig
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync
from doorscan.localbroker import LocalBroker, find_mosquitto
from doorscan.mqtt import make_client
from doorscan.mqtt_fake import FakeBroker
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import WIRE_REVISION, Scan, UnitRecord, VenueRecord, topic_ack, topic_scans
from hub.ingest import Ingestor
from hub.service import HubService
from tests.hubstore import open_store
from tests.waiting import wait_for


@dataclass
class Peer:
    """A broker (real or fake) as the contract tests see it."""

    client: Callable[..., Any]  # a connected client: (client_id, will=(topic, payload))
    drop: Callable[[Any], None]  # lose a client's connection without DISCONNECT
    received: dict[str, list[tuple[str, bytes, bool]]] = field(default_factory=dict)

    def listen(self, client_id: str, *patterns: str) -> Any:
        got = self.received.setdefault(client_id, [])
        client = self.client(client_id)
        client.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload), bool(m.retain)))
        for pattern in patterns:
            client.subscribe(pattern, qos=1)
        return client


@pytest.fixture(params=["mosquitto", "fake"])
def peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    if request.param == "fake":
        fake = FakeBroker()

        def fake_client(client_id: str, will: tuple[str, bytes] | None = None) -> Any:
            client = fake.fake_client(client_id)
            if will is not None:
                client.will_set(*will, qos=1, retain=True)
            client.connect("fake", 1883)
            return client

        yield Peer(fake_client, lambda client: client.drop())
        fake.close()
        return
    assert find_mosquitto() is not None, "mosquitto is not installed"
    with LocalBroker() as broker:
        clients: list[mqtt.Client] = []

        def real_client(client_id: str, will: tuple[str, bytes] | None = None) -> mqtt.Client:
            client = make_client(client_id)
            if will is not None:
                client.will_set(*will, qos=1, retain=True)
            client.connect(broker.host, broker.port)
            client.loop_start()
            clients.append(client)
            return client

        def drop(client: mqtt.Client) -> None:
            client.loop_stop()
            sock = client.socket()
            assert sock is not None
            sock.close()  # no DISCONNECT: the broker sees a lost connection

        yield Peer(real_client, drop)
        for client in clients:
            client.loop_stop()


def _eventually(check: Callable[[], bool]) -> bool:
    return wait_for(check, 5)


def test_retained_messages_come_at_subscribe_and_an_empty_one_clears(peer: Peer) -> None:
    writer = peer.client("writer")
    writer.publish("doorscan/v1/registry/units/u1", b"u1", qos=1, retain=True)
    writer.publish("doorscan/v1/registry/units/u2", b"u2", qos=1, retain=True)
    writer.publish("doorscan/v1/registry/units/u2", b"", qos=1, retain=True)
    time.sleep(0.3)
    peer.listen("late", "doorscan/v1/registry/#")
    assert _eventually(
        lambda: peer.received["late"] == [("doorscan/v1/registry/units/u1", b"u1", True)]
    )
    writer.publish("doorscan/v1/registry/units/u3", b"u3", qos=1, retain=True)
    # Forwarded live, a retained message arrives without the flag (MQTT 3.1.1).
    assert _eventually(
        lambda: ("doorscan/v1/registry/units/u3", b"u3", False) in peer.received["late"]
    )


def test_wildcards_and_a_last_will(peer: Peer) -> None:
    peer.listen("hub", "doorscan/v1/units/+/scans", "doorscan/v1/units/+/status")
    unit = peer.client("door-1")
    time.sleep(0.2)
    unit.publish("doorscan/v1/units/door-1/scans", b"batch", qos=1)
    unit.publish("doorscan/v1/units/door-1/ack", b"not for the hub", qos=1)
    assert _eventually(lambda: [p for _, p, _ in peer.received["hub"]] == [b"batch"])
    dying = peer.client("door-2", will=("doorscan/v1/units/door-2/status", b"offline"))
    time.sleep(0.3)
    peer.drop(dying)
    assert _eventually(
        lambda: ("doorscan/v1/units/door-2/status", b"offline", False) in peer.received["hub"]
    )


def test_a_shared_subscription_hands_each_message_to_one_member(peer: Peer) -> None:
    for worker in ("w1", "w2"):
        peer.listen(worker, "$share/hub/doorscan/v1/units/+/scans")
    unit = peer.client("door-1")
    time.sleep(0.2)
    for n in range(10):
        unit.publish("doorscan/v1/units/door-1/scans", str(n).encode(), qos=1)

    def seen() -> list[bytes]:
        return sorted(p for w in ("w1", "w2") for _, p, _ in peer.received[w])

    assert _eventually(lambda: len(seen()) == 10)
    time.sleep(0.2)
    assert seen() == sorted(str(n).encode() for n in range(10))


# -- what the fake makes fast --------------------------------------------------------------


def test_a_unit_and_the_hub_over_the_fake_settle_and_quarantine(
    hub_db: str, tmp_path: Path
) -> None:
    people = make_people(3, seed=5)
    day = datetime(2022, 1, 10, 2, 0, tzinfo=UTC)
    broker = FakeBroker()
    with open_store(hub_db) as store, ScanJournal(tmp_path / "journal.db") as journal:
        store.upsert_venue(VenueRecord(venue_id="hospital", name="H"))
        store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
        hub = HubService(
            Ingestor(store, now=lambda: day + timedelta(hours=1)),
            "fake",
            1883,
            client_factory=broker.client_factory,
        ).start()
        sync = MqttSync(
            "door-1",
            journal,
            BrokerConfig(),
            SyncConfig(batch_size=10),
            client_factory=broker.client_factory,
            status_every_s=3600,
        ).start()
        try:
            assert hub.wait_connected(5) and sync.wait_connected(5)
            assert wait_for(lambda: sync.hub_revision == WIRE_REVISION, 5)
            for n, person in enumerate(people):
                text = cccd_text(person) if n else "not a code"
                journal.record(
                    Scan(scan_id=f"scan-{n:04d}", venue_id="hospital", scanned_at=day, qr_text=text)
                )
            sync.notify()
            assert wait_for(lambda: journal.backlog() == 0, 5)
        finally:
            sync.close()
            hub.close()
            broker.close()
        assert [q.code for q in journal.quarantined()] == ["unknown_code"]
        assert store.counts()["scans"] == 2
    # The fake's record: the batch in revision 6, then the hub's answer, in that order.
    topics = [p.topic for p in broker.published]
    batch = next(p for p in broker.published if p.topic == topic_scans("door-1"))
    assert json.loads(batch.payload)["rev"] == WIRE_REVISION
    assert topics.index(topic_scans("door-1")) < topics.index(topic_ack("door-1"))
