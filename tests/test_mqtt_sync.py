"""mqtt_sync against a real Mosquitto and the real hub ingest: nothing is forgotten early.

The hub here runs in-process (`HubService` + `Ingestor` + the store of `hub_db`) so a test can
start it late, stop it, and look at its store; the broker is a real Mosquitto that the
tests kill and restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.config import BrokerConfig, SyncConfig
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import Scan, UnitRecord, UnitStatus, VenueRecord, decode_message, topic_status
from hub.ingest import Ingestor
from hub.service import HubService
from hub.store import HubStore
from tests.hubstore import open_store
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

T0 = datetime(2022, 1, 10, 2, 0, tzinfo=UTC)
PEOPLE = make_people(40, seed=17)


def _record(journal: ScanJournal, count: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + count):
        scan = Scan(
            scan_id=f"scan-{i:06d}",
            venue_id="hospital",
            scanned_at=T0 + timedelta(seconds=i),
            qr_text=cccd_text(PEOPLE[i % len(PEOPLE)]),
        )
        journal.record(scan)
        ids.append(scan.scan_id)
    return ids


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    with open_store(hub_db) as opened:
        opened.upsert_venue(VenueRecord(venue_id="hospital", name="Hospital"))
        opened.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
        yield opened


def _hub(store: HubStore, broker: LocalBroker) -> HubService:
    return HubService(
        Ingestor(store, now=lambda: T0 + timedelta(days=1)), broker.host, broker.port
    ).start()


def _sync(journal: ScanJournal, broker: LocalBroker, **sync: float) -> MqttSync:
    config = SyncConfig(
        batch_size=int(sync.get("batch_size", 50)),
        ack_timeout_s=sync.get("ack_timeout_s", 3.0),
        reconnect_min_s=1,
        reconnect_max_s=2,
    )
    return MqttSync("door-1", journal, BrokerConfig(host=broker.host, port=broker.port), config)


def test_backlog_recorded_offline_drains_when_the_broker_comes(
    broker: LocalBroker, store: HubStore, tmp_path: Path
) -> None:
    broker.stop()
    with ScanJournal(tmp_path / "journal.db") as journal:
        ids = _record(journal, 120)
        with _sync(journal, broker).start() as sync:
            time.sleep(1.5)  # connection attempts fail and back off meanwhile
            assert not sync.online and journal.backlog() == 120
            broker.start()
            with _hub(store, broker) as hub:
                assert hub.wait_connected(10)
                assert wait_for(lambda: journal.backlog() == 0)
    assert store.counts()["scans"] == 120
    assert {c.scan_id for c in store.checkins_at("hospital", 0, 2**62)} == set(ids)


def test_a_broker_puback_alone_settles_nothing(
    broker: LocalBroker, store: HubStore, tmp_path: Path
) -> None:
    with ScanJournal(tmp_path / "journal.db") as journal:
        _record(journal, 30)
        with _sync(journal, broker, ack_timeout_s=1.0).start() as sync:
            assert sync.wait_connected(10)
            assert wait_for(lambda: sync.batches_sent >= 1)
            time.sleep(1.0)
            # The broker has had the batches for a while; no hub, so no ack, so still pending.
            assert journal.backlog() == 30
            with _hub(store, broker):
                assert wait_for(lambda: journal.backlog() == 0)
    # Batches were resent after the ack timeout; the hub kept one copy of each scan.
    assert store.counts()["scans"] == 30


def test_broker_killed_mid_stream_loses_and_doubles_nothing(
    broker: LocalBroker, store: HubStore, tmp_path: Path
) -> None:
    with ScanJournal(tmp_path / "journal.db") as journal:
        with _hub(store, broker) as hub, _sync(journal, broker, batch_size=20).start() as sync:
            assert hub.wait_connected(10) and sync.wait_connected(10)
            _record(journal, 400)
            sync.notify()
            assert wait_for(lambda: journal.backlog() < 400, 10)
            broker.kill()  # persistence is off: whatever the broker held is gone
            _record(journal, 200, start=400)  # still scanning at the door meanwhile
            broker.start()
            assert wait_for(lambda: journal.backlog() == 0, 40)
        assert store.counts()["scans"] == 600


def test_status_is_retained_online_then_offline_on_close(
    broker: LocalBroker, tmp_path: Path
) -> None:
    seen: list[UnitStatus] = []

    def watch() -> mqtt.Client:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="watch")
        client.on_message = lambda c, u, m: seen.append(
            decode_message(bytes(m.payload), UnitStatus)
        )
        client.connect(broker.host, broker.port)
        client.subscribe(topic_status("door-1"), qos=1)
        client.loop_start()
        return client

    with ScanJournal(tmp_path / "journal.db") as journal:
        _record(journal, 3)
        with _sync(journal, broker).start() as sync:
            assert sync.wait_connected(10)
            time.sleep(0.3)
            watcher = watch()  # subscribes late: gets the retained status
            assert wait_for(lambda: len(seen) >= 1)
            assert seen[-1].online and seen[-1].backlog is not None
        assert wait_for(lambda: len(seen) >= 2 and not seen[-1].online)
        watcher.loop_stop()
        watcher.disconnect()
