"""Group commit: messages that arrive together are stored with one commit, and answered
exactly as if each had been stored alone.

The equivalence is checked on the ingestor (the same deliveries, one store handling them
one by one and another as one group: the same answers, the same rows); the grouping is
checked end to end, through a real Mosquitto, from what a unit sees: every single-scan
message acked as stored, every scan stored once, in fewer commits than messages.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from doorscan.localbroker import LocalBroker
from doorscan.mqtt import make_client
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    TOPIC_ROOT,
    WIRE_REVISION,
    Ack,
    Scan,
    ScanBatch,
    UnitRecord,
    UnitStatus,
    VenueRecord,
    decode_message,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
    topic_status,
)
from hub.ingest import Delivery, Ingestor, Reply
from hub.service import HubService
from hub.store import HubStore
from tests.hubstore import open_store
from tests.waiting import wait_for

NOW = datetime(2022, 1, 11, 3, tzinfo=UTC)
PEOPLE = make_people(4, seed=9)


def _scan(n: int, venue: str = "market", minutes: float = 30) -> Scan:
    return Scan(
        scan_id=f"scan-{n:06d}",
        venue_id=venue,
        scanned_at=NOW - timedelta(minutes=minutes) + timedelta(seconds=n / 2),
        qr_text=cccd_text(PEOPLE[n % len(PEOPLE)]),
    )


def _batch(unit: str, scans: list[Scan], batch_id: str | None = None) -> Delivery:
    batch = ScanBatch(
        rev=WIRE_REVISION,
        batch_id=batch_id or f"batch-{scans[0].scan_id}-{scans[0].venue_id}",
        unit_id=unit,
        sent_at=NOW,
        scans=scans,
    )
    return Delivery(topic_scans(unit), encode_message(batch))


def _registry() -> list[Delivery]:
    return [
        Delivery(topic_registry_venue(v), encode_message(VenueRecord(venue_id=v, name=v)), True)
        for v in ("market", "school")
    ] + [
        Delivery(
            topic_registry_unit(u),
            encode_message(UnitRecord(unit_id=u, venue_id="market")),
            True,
        )
        for u in ("door-1", "door-2")
    ]


def _deliveries() -> list[Delivery]:
    """A busy minute's mix: floods, resends, a replay, a forged id, a move, a status."""
    flood = [_batch("door-1", [_scan(n)]) for n in range(70)]  # 70 scans in 35 s: a flood
    replayed = _batch("door-2", [_scan(500), _scan(501)], batch_id="batch-replayed")
    forged = _batch("door-2", [_scan(502)], batch_id="batch-replayed")
    moved = UnitRecord(unit_id="door-2", venue_id="school")
    status = UnitStatus(unit_id="door-2", online=True, at=NOW, backlog=0, clock_trusted=True)
    return [
        *flood[:40],
        replayed,
        _batch("door-2", [_scan(500)]),  # a resend of a stored scan: a duplicate
        _batch(
            "door-2", [_scan(501).model_copy(update={"qr_text": cccd_text(PEOPLE[0])})]
        ),  # conflict
        replayed,
        forged,
        Delivery(topic_registry_unit("door-2"), encode_message(moved), True),
        _batch("door-2", [_scan(503)]),  # now a venue mismatch
        _batch("door-2", [_scan(504, venue="school")]),
        Delivery(topic_status("door-2"), encode_message(status), True),
        Delivery(topic_scans("door-3"), b'{"v": 1, "scans": ['),  # unreadable
        _batch("door-9", [_scan(505)]),  # unknown unit
        *flood[40:],
    ]


def _rows(store: HubStore) -> dict[str, Any]:
    checkins = store.checkins_at("market", 0, 2**62) + store.checkins_at("school", 0, 2**62)
    return {
        "scans": sorted(c.scan_id for c in checkins),
        "held": sorted(h.scan_id for h in store.held_scans(limit=1000)),
        "letters": sorted((d.code, d.topic) for d in store.dead_letters(limit=1000)),
        "counts": store.counts(),
    }


Outcome = tuple[list[list[dict[str, Any]]], dict[str, Any], dict[str, int]]


def _both_ways(
    tmp_path: Path, deliveries: list[Delivery], first: tuple[Delivery, ...] = ()
) -> list[Outcome]:
    """`deliveries` to two stores, one message at a time and as one group (each after the
    registry and `first`, handled alone): per way, the acks, the rows and the refusals."""
    outcomes = []
    for name, as_group in (("alone", False), ("grouped", True)):
        with open_store(tmp_path / f"{name}.db") as store:
            ingestor = Ingestor(store, now=lambda: NOW)
            for d in [*_registry(), *first]:
                ingestor.handle(d.topic, d.payload, retained=d.retained, qos=d.qos)
            answers: list[list[Reply]]
            if as_group:
                commits = ingestor.counters.scan_commits
                settled = ingestor.handle_group(deliveries)
                assert ingestor.counters.scan_commits == commits + 1
                answers = [replies for replies in settled if replies is not None]
                assert len(answers) == len(deliveries), "every message settled in the group"
            else:
                answers = [
                    ingestor.handle(d.topic, d.payload, retained=d.retained, qos=d.qos)
                    for d in deliveries
                ]
            acks = [
                [decode_message(r.payload, Ack).model_dump(exclude={"hub_time"}) for r in replies]
                for replies in answers
            ]
            outcomes.append((acks, _rows(store), ingestor.counters.refusals))
    return outcomes


def test_a_group_is_answered_and_stored_as_one_message_at_a_time(tmp_path: Path) -> None:
    """Every answer and every row the same; the flood bound sees a group's earlier scans."""
    outcomes = _both_ways(tmp_path, _deliveries())
    alone, grouped = outcomes
    assert grouped == alone
    _, rows, refusals = alone
    assert len(rows["held"]) == 10, "the flood bound holds 10 of 70 scans in 35 s"
    for code in ("scan_id_conflict", "batch_conflict", "venue_mismatch", "unknown_unit"):
        assert refusals.get(code), (code, refusals)


def test_messages_arriving_together_share_a_commit_and_are_each_acked(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """300 single-scan messages at once, as 300 units would send them: each acked as
    stored, each stored once, with fewer commits than messages."""
    units = [f"door-{i:03d}" for i in range(300)]
    acks: dict[str, Ack] = {}
    lock = threading.Lock()

    def on_ack(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        ack = decode_message(bytes(message.payload), Ack)
        with lock:
            acks[ack.batch_id] = ack

    with open_store(tmp_path / "hub.db") as store:
        store.upsert_venue(VenueRecord(venue_id="market", name="market"))
        for unit in units:
            store.upsert_unit(UnitRecord(unit_id=unit, venue_id="market"))
        ingestor = Ingestor(store)
        listener = make_client(f"units-{uuid.uuid4().hex[:6]}", persistent=False)
        listener.on_message = on_ack
        listener.connect(broker.host, broker.port)
        listener.loop_start()
        listener.subscribe(f"{TOPIC_ROOT}/units/+/ack", qos=1)
        publisher = make_client(f"pub-{uuid.uuid4().hex[:6]}", persistent=False)
        publisher.max_inflight_messages_set(100)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        try:
            with HubService(ingestor, broker.host, broker.port, client_id="hub-group") as hub:
                assert hub.wait_connected(10)
                now = datetime.now(UTC)
                sent = [
                    ScanBatch(
                        rev=WIRE_REVISION,
                        batch_id=f"batch-{unit}",
                        unit_id=unit,
                        sent_at=now,
                        scans=[
                            Scan(
                                scan_id=f"scan-{unit}",
                                venue_id="market",
                                scanned_at=now - timedelta(seconds=1),
                                qr_text=cccd_text(PEOPLE[i % len(PEOPLE)]),
                            )
                        ],
                    )
                    for i, unit in enumerate(units)
                ]
                for batch in sent:
                    publisher.publish(topic_scans(batch.unit_id), encode_message(batch), qos=1)
                assert wait_for(lambda: len(acks) == len(units), timeout_s=60), len(acks)
        finally:
            for client in (publisher, listener):
                client.disconnect()
                client.loop_stop()
        assert all(ack.stored == [f"scan-{ack.batch_id[6:]}"] for ack in acks.values())
        assert store.counts()["scans"] == len(units)
        commits = ingestor.counters.scan_commits
        assert commits < len(units), f"{commits} commits for {len(units)} messages"


@pytest.mark.parametrize(("new_scans", "held"), [(30, 0), (31, 1)])
def test_a_resent_batch_is_counted_once_by_the_flood_bound(
    tmp_path: Path, new_scans: int, held: int
) -> None:
    """A stored batch sent again (its ack lost) beside a new one: its scans count once.

    30 scans stored, then the same 30 again with 30 or 31 new ones in the same 30 s:
    60 scans of the unit in a minute is the bound (nothing held), 61 is one over; alone
    or grouped alike.
    """
    first = [_scan(n) for n in range(30)]
    resent = _batch("door-1", first)
    new = _batch("door-1", [_scan(n) for n in range(30, 30 + new_scans)])
    alone, grouped = _both_ways(tmp_path, [resent, new], first=(resent,))
    assert grouped == alone
    _, rows, _ = alone
    assert len(rows["scans"]) == 30 + new_scans - held
    assert len(rows["held"]) == held
