"""Judge every message that reaches the hub, store what is good, dead-letter the rest.

`Ingestor.handle(topic, payload)` is pure hub logic with no MQTT in it: the service
feeds it messages and publishes the ack it returns. The rules:

* a message outside the wire contract, unreadable or invalid goes to the dead-letter
  table with its reason, whole, byte for byte; nothing is raised;
* a batch must come from the unit its topic names, and that unit must be registered
  and active; each scan must be for that unit's venue, parse with the same parsers
  the unit used, and carry a plausible time (not before the service existed, not
  in the future beyond `future_tolerance`);
* good scans are inserted in one transaction, idempotently: a resent scan is
  reported as stored, never stored twice;
* refused scans of a batch are dead-lettered one by one, and named in the ack so
  the unit can let go of them: the hub keeps them, with the reason.

The ack is built only after the commit; the caller publishes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from doorscan.cards import CardKeyring
from doorscan.errors import Refusal
from doorscan.payloads import parse_qr
from doorscan.sealing import SealingError, open_sealed
from doorscan.wire import (
    Ack,
    RefusedScan,
    Scan,
    ScanBatch,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
    parse_topic,
    topic_ack,
)
from hub.store import BatchConflict, BatchKey, Store, StoredScan

__all__ = ["IngestCounters", "Ingestor", "Reply"]

log = logging.getLogger(__name__)

EARLIEST_SCAN = datetime(2020, 1, 1, tzinfo=UTC)
"""No doorscan scan can be older: a time before it is a Pi clock that never got set."""


@dataclass(frozen=True)
class Reply:
    """A message the hub must publish after handling one (today: an ack)."""

    topic: str
    payload: bytes


@dataclass
class IngestCounters:
    messages: int = 0
    scans_stored: int = 0
    scans_duplicate: int = 0
    scans_refused: int = 0
    dead_letters: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


class Ingestor:
    """Validates and stores; one instance per hub process."""

    def __init__(
        self,
        store: Store,
        *,
        card_keys: CardKeyring | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        future_tolerance: timedelta = timedelta(minutes=5),
        sealing_key: X25519PrivateKey | None = None,
    ) -> None:
        """`sealing_key` is the hub's private sealing key: it opens scans sent `sealed`."""
        self._store = store
        self._sealing_key = sealing_key
        self._card_keys = card_keys
        self._now = now
        self._future_tolerance = future_tolerance
        self.counters = IngestCounters()

    def handle(self, topic: str, payload: bytes) -> Reply | None:
        """Handle one message; return the reply to publish, if any. Never raises on bad input."""
        self.counters.messages += 1
        try:
            kind, entity_id = parse_topic(topic)
            if kind == "scans":
                return self._handle_batch(topic, entity_id, payload)
            if kind == "venue":
                self._handle_venue(entity_id, payload)
            elif kind == "unit":
                self._handle_unit(entity_id, payload)
            # status and ack topics carry nothing the hub stores yet.
            return None
        except Refusal as refusal:
            self._dead_letter(topic, payload, refusal)
            return None

    # -- registry ---------------------------------------------------------------------

    def _handle_venue(self, venue_id: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message; venues are never deleted by the wire
        venue = decode_message(payload, VenueRecord)
        if venue.venue_id != venue_id:
            raise Refusal("id_mismatch", f"venue {venue.venue_id} published on {venue_id}'s topic")
        self._store.upsert_venue(venue)

    def _handle_unit(self, unit_id: str, payload: bytes) -> None:
        if not payload:
            return
        unit = decode_message(payload, UnitRecord)
        if unit.unit_id != unit_id:
            raise Refusal("id_mismatch", f"unit {unit.unit_id} published on {unit_id}'s topic")
        if self._store.venue(unit.venue_id) is None:
            raise Refusal("unknown_venue", f"unit {unit_id} names unknown venue {unit.venue_id}")
        self._store.upsert_unit(unit)

    # -- scans --------------------------------------------------------------------------

    def _handle_batch(self, topic: str, unit_id: str, payload: bytes) -> Reply:
        batch = decode_message(payload, ScanBatch)
        if batch.unit_id != unit_id:
            raise Refusal(
                "unit_mismatch", f"batch from {batch.unit_id} published on {unit_id}'s topic"
            )
        unit = self._store.unit(unit_id)
        now = self._now()
        good: list[StoredScan] = []
        refused: list[tuple[Scan, Refusal]] = []
        for scan in batch.scans:
            try:
                good.append(self._judge(unit_id, unit, self._dated(scan, batch, now), now))
            except Refusal as refusal:
                refused.append((scan, refusal))
        digest = hashlib.sha256(
            "\n".join(sorted(s.scan_id for s in batch.scans)).encode()
        ).hexdigest()
        key = BatchKey(batch.batch_id, unit_id, digest)
        try:
            # The commit happens here; the ack is built only after it returned.
            result = self._store.insert_scans(good, received_at=now, batch=key)
        except BatchConflict as conflict:
            raise Refusal("replayed_batch", str(conflict)) from None
        self.counters.scans_stored += len(result.new)
        self.counters.scans_duplicate += len(result.duplicate)
        # Written after the batch was accepted (a forged batch is kept whole instead) and
        # before the ack is returned: the unit forgets these once the ack names them.
        for refused_scan, why in refused:
            self._dead_letter(topic, encode_message(refused_scan), why)
            self.counters.scans_refused += 1
        if result.replayed:
            # Harmless (every scan is already safe, and the unit is told so) but worth a
            # record: an honest unit never sends a batch id twice, a broker redelivery does.
            self._dead_letter(
                topic, payload, Refusal("replayed_batch", "this batch arrived before")
            )
        ack = Ack(
            batch_id=batch.batch_id,
            unit_id=unit_id,
            stored=[*result.new, *result.duplicate],
            refused=[RefusedScan(scan_id=s.scan_id, reason=r.reason) for s, r in refused],
            hub_time=now,
        )
        return Reply(topic_ack(unit_id), encode_message(ack))

    @staticmethod
    def _dated(scan: Scan, batch: ScanBatch, now: datetime) -> Scan:
        """Put right the time of a scan taken while the unit's clock was not trusted.

        The unit says how long before sending it took the scan, on its monotonic clock
        (which a wrong wall clock does not touch); the hub's own clock says when the batch
        arrived. Their difference dates the scan to within the network delay. It stays
        flagged `clock_trusted: false`. A scan from an earlier boot cannot be dated this
        way and keeps the unit's time, to be judged like any other.
        """
        if (
            scan.clock_trusted
            or scan.mono_ms is None
            or batch.sent_mono_ms is None
            or scan.boot_id is None
            or scan.boot_id != batch.boot_id
            or scan.mono_ms > batch.sent_mono_ms
        ):
            return scan
        age = timedelta(milliseconds=batch.sent_mono_ms - scan.mono_ms)
        corrected = now - age
        return scan.model_copy(
            update={
                "scanned_at": corrected.replace(microsecond=corrected.microsecond // 1000 * 1000)
            }
        )

    def _judge(
        self, unit_id: str, unit: UnitRecord | None, scan: Scan, now: datetime
    ) -> StoredScan:
        if unit is None:
            raise Refusal("unknown_unit", f"unit {unit_id} is not registered")
        if not unit.active:
            raise Refusal("revoked_unit", f"unit {unit_id} is revoked")
        if self._store.venue(scan.venue_id) is None:
            raise Refusal("unknown_venue", f"venue {scan.venue_id} is not registered")
        if scan.venue_id != unit.venue_id:
            raise Refusal(
                "venue_mismatch", f"unit {unit_id} belongs to {unit.venue_id}, not {scan.venue_id}"
            )
        if scan.scanned_at > now + self._future_tolerance:
            raise Refusal(
                "future_time", f"scanned_at {scan.scanned_at.isoformat()} is in the future"
            )
        if scan.scanned_at < EARLIEST_SCAN:
            raise Refusal(
                "implausible_time", f"scanned_at {scan.scanned_at.isoformat()} is before 2020"
            )
        identity = parse_qr(
            self._text_of(scan), card_keys=self._card_keys, today=scan.scanned_at.date()
        )
        if scan.kind is not None and scan.kind != identity.kind:
            raise Refusal("kind_mismatch", f"scan says {scan.kind}, the code is {identity.kind}")
        return StoredScan(
            scan_id=scan.scan_id,
            unit_id=unit_id,
            venue_id=scan.venue_id,
            scanned_at=scan.scanned_at,
            clock_trusted=scan.clock_trusted,
            identity=identity,
            source="mqtt",
        )

    def _text_of(self, scan: Scan) -> str:
        if scan.sealed is None:
            assert scan.qr_text is not None  # the wire's validator guarantees one of the two
            return scan.qr_text
        if self._sealing_key is None:
            raise SealingError("the scan is sealed and this hub has no sealing key")
        return open_sealed(scan.sealed, self._sealing_key)

    def _dead_letter(self, topic: str, payload: bytes, refusal: Refusal) -> None:
        self.counters.dead_letters += 1
        self.counters.refusals[refusal.code] = self.counters.refusals.get(refusal.code, 0) + 1
        log.warning("dead letter from %s: %s", topic[:200], refusal)
        self._store.add_dead_letter(
            source="mqtt",
            topic=topic[:1024],
            payload=payload,
            code=refusal.code,
            reason=refusal.reason,
            received_at=self._now(),
        )


def describe(counters: IngestCounters) -> str:
    """One JSON line for logs and the demo."""
    return json.dumps(counters.__dict__, sort_keys=True)
