"""What a unit does with the hub's answers: quarantine what is refused for good, keep and
resend later what the hub cannot take now, and speak the revision the hub announced.

A real Mosquitto, the real hub (`HubService` + `Ingestor` on a real store) and the real
`MqttSync` and journal.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
from doorscan.sealing import generate_key, seal
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    WIRE_REVISION,
    Scan,
    UnitRecord,
    UnitStatus,
    VenueRecord,
    decode_message,
    topic_hub_status,
    topic_scans,
    topic_status,
)
from hub.ingest import Ingestor
from hub.service import HubService
from hub.store import HubStore
from tests.hubstore import open_store
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

T0 = datetime(2022, 1, 10, 2, 0, tzinfo=UTC)
PEOPLE = make_people(5, seed=29)


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    with open_store(hub_db) as opened:
        opened.upsert_venue(VenueRecord(venue_id="hospital", name="Hospital"))
        opened.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
        yield opened


def _scan(n: int, text: str | None = None) -> Scan:
    return Scan(
        scan_id=f"scan-{n:06d}",
        venue_id="hospital",
        scanned_at=T0 + timedelta(minutes=n),
        qr_text=text or cccd_text(PEOPLE[n % len(PEOPLE)]),
    )


def _sync(journal: ScanJournal, broker: LocalBroker, unit_id: str = "door-1") -> MqttSync:
    config = SyncConfig(
        batch_size=10, ack_timeout_s=3.0, retry_refused_min_s=0.3, retry_refused_max_s=0.6
    )
    broker_config = BrokerConfig(host=broker.host, port=broker.port)
    return MqttSync(unit_id, journal, broker_config, config, status_every_s=3600)


def _hub(store: HubStore, broker: LocalBroker) -> HubService:
    return HubService(Ingestor(store, now=lambda: T0 + timedelta(days=1)), broker.host, broker.port)


class Sniffer:
    """A plain client that keeps every payload published under doorscan/v1/."""

    def __init__(self, broker: LocalBroker) -> None:
        self.seen: list[tuple[str, dict[str, object]]] = []
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.seen.append(
            (m.topic, json.loads(m.payload) if m.payload else {})
        )
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("doorscan/v1/#", qos=1)
        self.client.loop_start()

    def on(self, topic: str) -> list[dict[str, object]]:
        return [payload for seen_topic, payload in list(self.seen) if seen_topic == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_scan_refused_for_good_is_quarantined_kept_and_counted(
    broker: LocalBroker, store: HubStore, tmp_path: Path
) -> None:
    sniffer = Sniffer(broker)
    with (
        ScanJournal(tmp_path / "journal.db") as journal,
        _hub(store, broker) as hub,
        _sync(journal, broker).start() as sync,
    ):
        assert hub.wait_connected(10) and sync.wait_connected(10)
        assert wait_for(lambda: sync.hub_revision == WIRE_REVISION)
        # A text the hub's parsers refuse (a journal of an older unit may hold one).
        journal.record(_scan(1, text="not a code anyone issued"))
        journal.record(_scan(2))
        sync.notify()
        assert wait_for(lambda: journal.backlog() == 0)
        [kept] = journal.quarantined()
        assert (kept.scan_id, kept.code) == ("scan-000001", "unknown_code")
        assert journal.quarantine_count() == 1

        def latest_status() -> UnitStatus:
            seen = sniffer.on(topic_status("door-1"))
            return decode_message(json.dumps(seen[-1]).encode(), UnitStatus)

        # The status says so once the unit publishes it, which may follow the journal's
        # update by a moment: waited for, as an operator's dashboard would see it.
        assert wait_for(lambda: latest_status().quarantined == 1), latest_status()
        sent = [s for b in sniffer.on(topic_scans("door-1")) for s in b["scans"]]  # type: ignore[attr-defined]
        assert len(sent) == 2  # not sent again
        # Released by a technician: sent again, refused again, kept again.
        assert journal.release_quarantined() == 1
        sync.notify()
        assert wait_for(lambda: journal.quarantine_count() == 1 and journal.backlog() == 0)
    sniffer.close()
    assert store.counts()["scans"] == 1
    assert [d.code for d in store.dead_letters()] == ["unknown_code", "unknown_code"]


def test_a_scan_the_hub_cannot_take_now_is_kept_and_sent_again_later(
    broker: LocalBroker, store: HubStore, tmp_path: Path
) -> None:
    # door-2 is not in the hub's registry yet (its record is late): "not now".
    sniffer = Sniffer(broker)
    with ScanJournal(tmp_path / "journal.db") as journal:
        journal.record(_scan(1))
        with _hub(store, broker) as hub, _sync(journal, broker, "door-2").start() as sync:
            assert hub.wait_connected(10) and sync.wait_connected(10)
            assert wait_for(lambda: sync.acks_received >= 1)
            assert journal.backlog() == 1 and journal.quarantine_count() == 0
            store.upsert_unit(UnitRecord(unit_id="door-2", venue_id="hospital"))
            assert wait_for(lambda: journal.backlog() == 0, 10)
            assert sync.acks_received >= 2
    sniffer.close()
    assert store.dead_letters() == [] and store.counts()["scans"] == 1
    # The same scan went twice, each time in a batch of its own id (docs/wire.md).
    sent = [b["batch_id"] for b in sniffer.on(topic_scans("door-2"))]
    assert len(sent) >= 2 and len(set(sent)) == len(sent)


def test_the_unit_writes_the_revision_the_hub_announced(
    broker: LocalBroker, store: HubStore, tmp_path: Path
) -> None:
    sniffer = Sniffer(broker)
    with ScanJournal(tmp_path / "journal.db") as journal:
        journal.record(_scan(1))
        with _sync(journal, broker).start() as sync:
            assert sync.wait_connected(10)
            assert wait_for(lambda: len(sniffer.on(topic_scans("door-1"))) >= 1)
            # No hub has announced itself: the batch is in the form revision 5 reads.
            assert "rev" not in sniffer.on(topic_scans("door-1"))[0]
            with _hub(store, broker) as hub:
                assert hub.wait_connected(10)
                assert wait_for(lambda: journal.backlog() == 0, 10)
                journal.record(_scan(2))
                sync.notify()
                assert wait_for(lambda: journal.backlog() == 0)
    sniffer.close()
    batches = sniffer.on(topic_scans("door-1"))
    assert batches[-1]["rev"] == WIRE_REVISION


def test_the_quarantine_command_lists_and_releases_as_documented(tmp_path: Path) -> None:
    config = tmp_path / "unit.json"
    config.write_text(
        json.dumps({"unit_id": "door-1", "venue_id": "hospital", "data_dir": str(tmp_path)}),
        encoding="utf-8",
    )
    with ScanJournal(tmp_path / "journal.db") as journal:
        for n in (1, 2, 3):
            journal.record(_scan(n))
        journal.quarantine(
            [("scan-000001", "unsealable", "does not open"), ("scan-000002", "future_time", "x")],
            T0,
        )

    def device(*words: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "device", "quarantine", "--config", str(config), *words],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    listed = [json.loads(line) for line in device().splitlines()]
    assert [(k["scan_id"], k["code"]) for k in listed] == [
        ("scan-000001", "unsealable"),
        ("scan-000002", "future_time"),
    ]
    assert "qr_text" not in json.dumps(listed)
    assert "released 1 scans" in device("--release", "unsealable")
    assert [json.loads(line)["code"] for line in device().splitlines()] == ["future_time"]
    with ScanJournal(tmp_path / "journal.db") as journal:
        assert journal.backlog() == 2 and journal.quarantine_count() == 1


def test_a_unit_holds_scans_that_the_hub_it_hears_cannot_read(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """A hub that announces an older revision than a scan needs gets nothing it would
    refuse: the unit waits, and sends once a hub that reads it announces itself."""
    sniffer = Sniffer(broker)
    announce = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    announce.connect(broker.host, broker.port)
    announce.loop_start()

    def hub_reads(revision: int) -> None:
        status = {"v": 1, "rev": 6, "schema": "doorscan.hub-status", "online": True}
        status["revision"] = revision
        announce.publish(
            topic_hub_status(), json.dumps(status).encode(), qos=1, retain=True
        ).wait_for_publish(5)

    hub_reads(2)  # sealed scans came in revision 3
    with ScanJournal(tmp_path / "journal.db") as journal:
        sealed = seal(cccd_text(PEOPLE[0]), generate_key().public_key())
        journal.record(
            Scan(
                scan_id="sealed-000001",
                venue_id="hospital",
                scanned_at=T0,
                sealed=sealed,
                kind="cccd",
            )
        )
        with _sync(journal, broker).start() as sync:
            assert sync.wait_connected(10) and wait_for(lambda: sync.hub_revision == 2)
            sync.notify()
            assert not wait_for(lambda: bool(sniffer.on(topic_scans("door-1"))), 1.5)
            hub_reads(6)
            assert wait_for(lambda: bool(sniffer.on(topic_scans("door-1"))), 10)
    announce.loop_stop()
    sniffer.close()
    [sent] = sniffer.on(topic_scans("door-1"))
    assert sent["rev"] == 6 and sent["scans"][0]["sealed"] == sealed  # type: ignore[index]
