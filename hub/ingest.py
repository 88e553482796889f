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
  the unit can let go of them: the hub keeps them, with the reason;
* a unit's status (retained "online", or the broker's last will "offline") is kept,
  the latest per unit, for the units page. A status from a unit the registry does not
  know is kept too, because such a unit talking (installed before its registry record,
  or provisioned with a wrong id) is exactly what an operator must see; the units page
  flags it. It carries no identity, and the broker's ACL lets only that unit publish
  on its status topic.

The ack is built only after the commit; the caller publishes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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
    UnitStatus,
    VenueRecord,
    decode_message,
    encode_message,
    parse_topic,
    topic_ack,
)
from hub.store import BatchConflict, BatchKey, Store, StoredScan

if TYPE_CHECKING:
    from hub.web.metrics import HubMetrics

__all__ = ["IngestCounters", "Ingestor", "Reply", "StatusSink"]

log = logging.getLogger(__name__)

EARLIEST_SCAN = datetime(2020, 1, 1, tzinfo=UTC)
"""No doorscan scan can be older: a time before it is a Pi clock that never got set."""


@runtime_checkable
class StatusSink(Protocol):
    """Where units' statuses go: every `HubStore` (`hub.store.ReportStore`).

    Not yet part of `hub.store.Store`, so it is checked when the ingestor is made.
    """

    def upsert_unit_status(
        self, unit_id: str, received_at: datetime, online: bool, status_json: str
    ) -> None: ...


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
    statuses: int = 0
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
        metrics: HubMetrics | None = None,
    ) -> None:
        """`sealing_key` is the hub's private sealing key: it opens scans sent `sealed`.

        `metrics` (`hub.web.metrics.HubMetrics`), if given, counts what is stored,
        dead-lettered and acked, and the ingest lag.
        """
        self._store = store
        self._statuses = store if isinstance(store, StatusSink) else None
        if self._statuses is None:
            log.error("this store cannot keep unit statuses; the units page will lack them")
        self._metrics = metrics
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
                reply = self._handle_batch(topic, entity_id, payload)
                if self._metrics is not None:
                    self._metrics.acks_sent.inc()
                return reply
            if kind == "venue":
                self._handle_venue(entity_id, payload)
            elif kind == "unit":
                self._handle_unit(entity_id, payload)
            elif kind == "status":
                self._handle_status(entity_id, payload)
            # Ack topics are the hub's own words to the units: nothing to store.
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

    def _handle_status(self, unit_id: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained status: the unit was retired; keep its last word
        status = decode_message(payload, UnitStatus)
        if status.unit_id != unit_id:
            raise Refusal(
                "id_mismatch", f"status of {status.unit_id} published on {unit_id}'s topic"
            )
        if self._statuses is None:
            return
        # Stored as it came, re-encoded from the validated model: the units page reads
        # backlog and version from it, and a field added later needs no migration.
        self._statuses.upsert_unit_status(
            unit_id, self._now(), status.online, encode_message(status).decode("utf-8")
        )
        self.counters.statuses += 1

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
        if self._metrics is not None:
            self._observe(good, set(result.new), now)
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

    def _observe(self, stored: list[StoredScan], new: set[str], now: datetime) -> None:
        assert self._metrics is not None
        self._metrics.scans_ingested.inc(len(new))
        for scan in stored:
            # An untrusted clock's time was set by the hub itself (`_dated`): no lag to see.
            if scan.scan_id in new and scan.clock_trusted:
                self._metrics.observe_lag((now - scan.scanned_at).total_seconds())

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
        if self._metrics is not None:
            self._metrics.dead_letters.inc()
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
