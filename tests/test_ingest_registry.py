"""The hub keeps the registry in memory for judging scans; registry messages keep it true.

Each message is built from the published wire schema and handed to the ingestor as the
broker delivers it; what a unit learns is read from the ack the hub answers with.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    WIRE_REVISION,
    Ack,
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
)
from hub.ingest import Ingestor
from tests.hubstore import open_store

NOW = datetime(2022, 1, 11, 3, tzinfo=UTC)
PERSON = make_people(1, seed=5)[0]


def _send_scan(ingestor: Ingestor, unit_id: str, venue_id: str) -> Ack:
    scan = Scan(
        scan_id=uuid.uuid4().hex,
        venue_id=venue_id,
        scanned_at=NOW - timedelta(minutes=1),
        qr_text=cccd_text(PERSON),
    )
    batch = ScanBatch(
        rev=WIRE_REVISION, batch_id=uuid.uuid4().hex, unit_id=unit_id, sent_at=NOW, scans=[scan]
    )
    [reply] = ingestor.handle(topic_scans(unit_id), encode_message(batch))
    return decode_message(reply.payload, Ack)


def _codes(ack: Ack) -> list[str | None]:
    return [refusal.code for refusal in ack.refused]


def test_registry_changes_reach_the_next_scan(tmp_path: Path) -> None:
    """A unit revoked, moved or registered after the hub judged its scans is judged anew."""
    with open_store(tmp_path / "hub.db") as store:
        ingestor = Ingestor(store, now=lambda: NOW)
        for venue in ("market", "school"):
            ingestor.handle(
                topic_registry_venue(venue), encode_message(VenueRecord(venue_id=venue, name=venue))
            )
        unit = UnitRecord(unit_id="door-1", venue_id="market")
        ingestor.handle(topic_registry_unit("door-1"), encode_message(unit))

        assert _codes(_send_scan(ingestor, "door-1", "market")) == []
        # Moved to the school: a scan still naming the market is refused, the school's taken.
        moved = unit.model_copy(update={"venue_id": "school"})
        ingestor.handle(topic_registry_unit("door-1"), encode_message(moved))
        assert _codes(_send_scan(ingestor, "door-1", "market")) == ["venue_mismatch"]
        assert _codes(_send_scan(ingestor, "door-1", "school")) == []
        # Revoked: refused from the next scan on.
        revoked = moved.model_copy(update={"active": False})
        ingestor.handle(topic_registry_unit("door-1"), encode_message(revoked))
        assert _codes(_send_scan(ingestor, "door-1", "school")) == ["revoked_unit"]

        # Unknown at its first scan, registered a moment later: the second scan is taken.
        assert _codes(_send_scan(ingestor, "door-2", "market")) == ["unknown_unit"]
        ingestor.handle(
            topic_registry_unit("door-2"),
            encode_message(UnitRecord(unit_id="door-2", venue_id="market")),
        )
        assert _codes(_send_scan(ingestor, "door-2", "market")) == []
        assert store.counts()["scans"] == 3
