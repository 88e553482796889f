"""Judge every message that reaches the hub, store what is good, keep the rest, answer.

`Ingestor.handle(topic, payload)` is pure hub logic with no MQTT in it: the service
feeds it messages and publishes the replies it returns. Its promise: **every message
is settled**. Whatever the bytes do to the decoder, `handle` returns; the only thing it
raises is `StoreFailure`, when the store could not be written (then nothing of the
message was, and the service must not tell the broker it has it). The rules:

* a message outside the wire contract, unreadable or invalid goes to the dead-letter
  table with a code and its reason, whole (a payload over the size limit: its first
  bytes, SHA-256 and length); so does anything the code fails on unexpectedly
  (``internal_error``, with the exception's type, logged with its traceback);
* a scan batch whose unit and ``batch_id`` can be read is always answered
  (`hub.batch_reader`, `hub.answers`): each scan stored, or refused alone with a code
  (`hub.judge`), or the batch refused whole (retained, QoS 0, wrong unit, a bad head);
* good scans are inserted in one transaction with the dead letters of the refused
  ones, idempotently: a resent scan is reported as stored, never stored twice, and a
  scan id reused with other content is a conflict, refused (`hub.store.base`);
* a scan that breaks one of `hub.history`'s bounds (dated before its unit existed or
  before it last said it had sent everything, or a flood) is stored apart from
  traces; refusals that say "not now" (`hub.judge.RETRY_CODES`) keep nothing, since
  the unit keeps the scan;
* a unit's status is kept, the latest per unit, for the units page (also from units
  the registry does not know: an operator must see such a unit talking).

The ack is built only after the commit; the caller publishes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from doorscan.cards import CardKeyring
from doorscan.errors import Refusal
from doorscan.timefmt import format_rfc3339, to_ms
from doorscan.wire import (
    MAX_MESSAGE_BYTES,
    CardRevocations,
    FleetKeys,
    UnitRecord,
    UnitStatus,
    VenueRecord,
    decode_message,
    encode_message,
    parse_topic,
    topic_ack,
)
from doorscan.wire.codec import load_json
from doorscan.wire.limits import (
    DEAD_LETTER_PREFIX_BYTES,
    FUTURE_TOLERANCE_S,
    RATE_MAX_SCANS,
    RATE_WINDOW_S,
)
from hub.answers import answer
from hub.batch_reader import ReadBatch, read_batch
from hub.history import UnitHistory, hold_of
from hub.judge import RETRY_CODES, ScanJudge, dated
from hub.keycheck import key_problems
from hub.store import (
    BatchConflict,
    BatchInsert,
    BatchKey,
    InsertResult,
    NewDeadLetter,
    Store,
    StoredScan,
)

if TYPE_CHECKING:
    from hub.web.metrics import HubMetrics

__all__ = [
    "Delivery",
    "IngestCounters",
    "Ingestor",
    "KeysMismatch",
    "Reply",
    "StatusSink",
    "StoreFailure",
    "describe",
]

log = logging.getLogger(__name__)


class StoreFailure(RuntimeError):
    """The store could not be read or written; nothing of the message was stored."""


class KeysMismatch(RuntimeError):
    """The hub's keys cannot open what the fleet sends (`hub.keycheck`): a scan batch is
    left unsettled, for the broker to deliver again to a hub with the right keys, rather
    than dead-lettered."""


@runtime_checkable
class StatusSink(Protocol):
    """Where units' statuses go: every `HubStore` (`hub.store.ReportStore`).

    Not yet part of `hub.store.Store`, so it is checked when the ingestor is made.
    """

    def upsert_unit_status(
        self,
        unit_id: str,
        received_at: datetime,
        online: bool,
        status_json: str,
        drained_at: datetime | None = None,
    ) -> None: ...

    def unit_drained_at(self, unit_id: str) -> datetime | None: ...


@dataclass(frozen=True)
class Reply:
    """A message the hub must publish after handling one: an ack, or a retained clear."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class IngestCounters:
    messages: int = 0
    scans_stored: int = 0
    scans_duplicate: int = 0
    scans_refused: int = 0
    scans_held: int = 0
    scans_deferred: int = 0
    dead_letters: int = 0
    statuses: int = 0
    scan_commits: int = 0  # store transactions that wrote scan batches (a group: one)
    refusals: dict[str, int] = field(default_factory=dict)


@dataclass
class _Verdicts:
    """What the judging of one batch decided, before the store is written."""

    good: list[StoredScan] = field(default_factory=list)
    refused: list[tuple[str, Refusal]] = field(default_factory=list)
    letters: list[NewDeadLetter] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    """A message as the broker delivered it, for `Ingestor.handle_group`."""

    topic: str
    payload: bytes
    retained: bool = False
    qos: int = 1


@dataclass(frozen=True)
class _Pending:
    """A scan batch read and judged, waiting for its store transaction."""

    topic: str
    payload: bytes
    read: ReadBatch
    verdicts: _Verdicts
    key: BatchKey
    now: datetime
    replies: list[Reply]


@dataclass(frozen=True)
class ReplayOutcome:
    """A replayed message: the scan ids now stored (new or already there), and the refused."""

    stored: list[str]
    refused: list[tuple[str, Refusal]]


def _as_batch(unit_id: str, payload: bytes, sent_at: datetime) -> bytes:
    """The payload as a batch: a per-scan dead letter holds the scan alone."""
    _, data = load_json(payload)
    if data.get("schema") == "doorscan.scan-batch" or "scans" in data:
        return payload
    batch = {
        "v": 1,
        "schema": "doorscan.scan-batch",
        "batch_id": "replay-" + hashlib.sha256(payload).hexdigest()[:32],
        "unit_id": unit_id,
        "sent_at": format_rfc3339(sent_at),
        "scans": [data],
    }
    return json.dumps(batch, ensure_ascii=False).encode("utf-8")


class Ingestor:
    """Validates and stores; one instance per hub process (or worker)."""

    def __init__(
        self,
        store: Store,
        *,
        card_keys: CardKeyring | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        future_tolerance: timedelta = timedelta(seconds=FUTURE_TOLERANCE_S),
        sealing_key: X25519PrivateKey | None = None,
        metrics: HubMetrics | None = None,
        max_scans_per_minute: int = RATE_MAX_SCANS,
        on_key_mismatch: Callable[[list[str]], None] | None = None,
    ) -> None:
        """`sealing_key` is the hub's private sealing key: it opens scans sent `sealed`.

        `metrics` (`hub.web.metrics.HubMetrics`), if given, counts what is stored,
        dead-lettered and acked, and the ingest lag. `max_scans_per_minute` bounds how
        fast one unit's scans may come (`hub.history`; 0: no bound). `on_key_mismatch`
        is called with the problems when the fleet's `FleetKeys` arrive and the hub's
        keys do not match them (``serve`` stops); scan batches then raise `KeysMismatch`.
        """
        self._sealing_key = sealing_key
        self._card_keys = card_keys
        self._on_key_mismatch = on_key_mismatch
        self.key_problems: list[str] = []
        self._max_per_window = max_scans_per_minute
        self._store = store
        self._statuses = store if isinstance(store, StatusSink) else None
        if self._statuses is None:
            log.error("this store cannot keep unit statuses; the units page will lack them")
        self._metrics = metrics
        self._judge = ScanJudge(
            card_keys=card_keys, sealing_key=sealing_key, future_tolerance=future_tolerance
        )
        self._now = now
        self._warned_at: dict[str, float] = {}
        # The registry as far as scans need it, kept in memory so that a batch costs no
        # registry query: units and venues found, never the absence of one (a unit
        # registered a moment ago is then seen at its first scan). Every registry record
        # comes to every hub process (a plain subscription), which refreshes these.
        self._units: dict[str, UnitRecord] = {}
        self._venues: set[str] = set()
        # Each unit's last word that it held nothing unsent (`hub.history`), read once and
        # dropped at each status of the unit, which every hub process receives too.
        self._drained: dict[str, datetime | None] = {}
        # Scan times of a group's batches judged but not yet committed (`handle_group`).
        self._group_scans: dict[str, dict[str, int]] = {}  # unit -> scan id -> time
        self.counters = IngestCounters()

    def handle(
        self, topic: str, payload: bytes, *, retained: bool = False, qos: int = 1
    ) -> list[Reply]:
        """Handle one message; return what to publish. Raises `StoreFailure`, and
        `KeysMismatch` for a scan batch while the hub's keys do not match the fleet's.

        `retained` and `qos` are as the broker delivered the message: a scan batch must
        come at QoS 1 and not retained.
        """
        self.counters.messages += 1
        if self.key_problems and topic.endswith("/scans"):
            # Outside the try below, whose catch-all would keep the batch as a dead
            # letter and so settle it: this one must stay with the broker, unsettled.
            raise KeysMismatch("; ".join(self.key_problems))
        with self._kept_if_it_fails(topic, payload):
            kind, entity_id = parse_topic(topic)
            if kind == "scans":
                return self._handle_batch(topic, entity_id, payload, retained, qos)
            if kind == "venue":
                self._handle_venue(entity_id, payload)
            elif kind == "unit":
                self._handle_unit(entity_id, payload)
            elif kind == "status":
                self._handle_status(entity_id, payload)
            elif kind == "card_revocations":
                self._handle_card_revocations(payload)
            elif kind == "fleet_keys":
                self._handle_fleet_keys(payload)
            # Ack, config and hub topics are the hub's own words: nothing to store.
        return []

    @contextmanager
    def _kept_if_it_fails(self, topic: str, payload: bytes) -> Iterator[None]:
        """Whatever handling a message raises but `StoreFailure` keeps it as a dead letter."""
        try:
            yield
        except Refusal as refusal:
            self._dead_letter(topic, payload, refusal)
        except StoreFailure:
            raise
        except Exception as exc:
            # A bug of ours, found by a message: keep the message, keep consuming.
            log.exception("handling a message on %s failed; it is kept as a dead letter", topic)
            self._dead_letter(topic, payload, _internal(exc))

    def poison(self, topic: str, payload: bytes, attempts: int, last_error: str) -> list[Reply]:
        """Give up on a message the store failed on `attempts` times: keep it, answer it.

        The service calls this when other messages were stored meanwhile, so the fault
        is this message's. Raises `StoreFailure` if even the dead letter cannot be
        written (then the store is down after all, and the message waits).
        """
        refusal = Refusal("poison", f"storing it failed {attempts} times: {last_error}"[:300])
        self._dead_letter(topic, payload, refusal)
        try:
            kind, unit_id = parse_topic(topic)
            if kind != "scans":
                return []
            read = read_batch(unit_id, payload)
        except Exception:  # unanswerable: the dead letter is all there is
            return []
        return self._replies(read, [], [], refusal)

    def replay(
        self, topic: str, payload: bytes, sent_at: datetime, *, store: bool = True
    ) -> ReplayOutcome:
        """Judge a kept scan message again, with today's keys and registry; store what passes.

        For `hub.replay`: no ack is sent (the unit was answered when the message came) and
        nothing is dead-lettered again (the letter stays as it is). `payload` is a whole
        batch, or one scan as a per-scan dead letter keeps it, which is judged as a batch
        of one sent at `sent_at`. Raises `Refusal` for a message that cannot be read at
        all, `StoreFailure` when the store fails. With `store` false, nothing is
        written: `stored` lists what would be.
        """
        kind, unit_id = parse_topic(topic)
        if kind != "scans":  # callers pick scan letters (hub.replay); anything else is a bug
            raise ValueError(f"only scan messages are replayed, not {kind} ({topic[:100]})")
        read = read_batch(unit_id, _as_batch(unit_id, payload, sent_at))
        if read.refusal is not None:
            return ReplayOutcome([], [(read.batch_id, read.refusal)])
        verdicts = self._verdicts(topic, read, self._now())
        if not store:
            return ReplayOutcome([s.scan_id for s in verdicts.good], verdicts.refused)
        with _storing():
            result = self._store.insert_scans(verdicts.good, received_at=self._now())
        conflicts = [
            (scan_id, Refusal("scan_id_conflict", "stored before with other content"))
            for scan_id in result.conflict
        ]
        return ReplayOutcome(result.new + result.duplicate, verdicts.refused + conflicts)

    # -- registry and status ------------------------------------------------------------

    def _handle_venue(self, venue_id: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message; venues are never deleted by the wire
        venue = decode_message(payload, VenueRecord)
        if venue.venue_id != venue_id:
            raise Refusal("id_mismatch", f"venue {venue.venue_id} published on {venue_id}'s topic")
        with _storing():
            self._store.upsert_venue(venue)
        self._venues.add(venue.venue_id)

    def _handle_unit(self, unit_id: str, payload: bytes) -> None:
        if not payload:
            return
        unit = decode_message(payload, UnitRecord)
        if unit.unit_id != unit_id:
            raise Refusal("id_mismatch", f"unit {unit.unit_id} published on {unit_id}'s topic")
        with _storing():
            known = self._venue_known(unit.venue_id)
            if known:
                self._store.upsert_unit(unit)
        # Dropped, not replaced: the store merges a record into what it had (a record
        # without registered_at keeps the date known), so the next scan reads the result.
        self._units.pop(unit_id, None)
        if not known:
            raise Refusal("unknown_venue", f"unit {unit_id} names unknown venue {unit.venue_id}")

    def _handle_fleet_keys(self, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message: keep comparing with the last keys known
        fleet = decode_message(payload, FleetKeys)
        with _storing():
            # Kept, so that the next start compares before it takes any scan (hub.preflight).
            self._store.set_fleet_keys(payload.decode("utf-8"), self._now())
        self.key_problems = key_problems(fleet, self._sealing_key, self._card_keys)
        for problem in self.key_problems:
            log.error("the hub's keys do not match the fleet's: %s", problem)
        if self.key_problems and self._on_key_mismatch is not None:
            self._on_key_mismatch(self.key_problems)

    def _handle_card_revocations(self, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained list would un-revoke every card: never taken
        revocations = decode_message(payload, CardRevocations)
        if self._judge.revoke_cards(revocations):
            log.info(
                "card revocations version %d: %d cards",
                revocations.version,
                len(revocations.revoked),
            )

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
        # The unit's word that it held nothing unsent, on a clock it trusts (hub.history).
        drained = (
            status.at
            if status.online and status.backlog == 0 and status.clock_trusted and status.at
            else None
        )
        # Stored as it came, re-encoded from the validated model: the units page reads
        # backlog and version from it, and a field added later needs no migration.
        with _storing():
            self._statuses.upsert_unit_status(
                unit_id,
                self._now(),
                status.online,
                encode_message(status).decode("utf-8"),
                drained_at=drained,
            )
        self._drained.pop(unit_id, None)  # the store keeps the latest: read it there
        self.counters.statuses += 1

    # -- scans --------------------------------------------------------------------------

    def _handle_batch(
        self, topic: str, unit_id: str, payload: bytes, retained: bool, qos: int
    ) -> list[Reply]:
        prepared = self._prepare_batch(topic, unit_id, payload, retained, qos)
        if not isinstance(prepared, _Pending):
            return prepared
        try:
            with _storing():
                # The commit happens here; the ack is built only after it returned.
                result: InsertResult | BatchConflict = self._store.insert_scans(
                    prepared.verdicts.good,
                    received_at=prepared.now,
                    batch=prepared.key,
                    letters=prepared.verdicts.letters,
                )
            self.counters.scan_commits += 1
        except StoreFailure as failure:
            if not isinstance(failure.__cause__, BatchConflict):
                raise
            result = failure.__cause__
        return self._finish_batch(prepared, result)

    def handle_group(self, messages: Sequence[Delivery]) -> list[list[Reply] | None]:
        """Handle several messages with one commit for all their scan batches (group commit).

        Each message is judged as `handle` would, in order; what the scan batches store
        is then written in one transaction, and only after its commit are the replies
        built: one list per message, in order. Other messages (registry, statuses) and
        whatever is refused whole are written as they come, as `handle` writes them.
        None in place of a message's replies: the store failed before it was settled
        (the group's transaction, or this message or an earlier one on its own), nothing
        of it was stored, and the caller must handle it alone (`handle`), which tells a
        store that is down from a message that breaks it. `KeysMismatch` as `handle`.
        """
        if self.key_problems and any(d.topic.endswith("/scans") for d in messages):
            raise KeysMismatch("; ".join(self.key_problems))
        prepared: list[list[Reply] | _Pending | None] = []
        try:
            for delivery in messages:
                prepared.append(self._prepare(delivery))
        except StoreFailure as failure:
            log.warning("the store failed within a group (%s); the rest goes alone", failure)
            prepared += [None] * (len(messages) - len(prepared))
        finally:
            self._group_scans.clear()
        pending = [p for p in prepared if isinstance(p, _Pending)]
        if not pending:
            return [p for p in prepared if not isinstance(p, _Pending)]
        try:
            with _storing():
                results = self._store.insert_batches(
                    [BatchInsert(p.verdicts.good, p.key, p.verdicts.letters) for p in pending],
                    received_at=self._now(),
                )
        except StoreFailure as failure:
            log.warning("storing %d batches together failed: %s", len(pending), failure)
            return [None if isinstance(p, _Pending) else p for p in prepared]
        self.counters.scan_commits += 1
        finished = iter([self._finish_batch(p, r) for p, r in zip(pending, results, strict=True)])
        return [next(finished) if isinstance(p, _Pending) else p for p in prepared]

    def _prepare(self, delivery: Delivery) -> list[Reply] | _Pending:
        """A scan batch judged and ready to store, or what `handle` answers anything else."""
        topic, payload = delivery.topic, delivery.payload
        try:
            kind, unit_id = parse_topic(topic)
        except Refusal:
            kind = unit_id = ""
        if kind != "scans":
            return self.handle(topic, payload, retained=delivery.retained, qos=delivery.qos)
        self.counters.messages += 1
        prepared: list[Reply] | _Pending = []
        with self._kept_if_it_fails(topic, payload):
            prepared = self._prepare_batch(topic, unit_id, payload, delivery.retained, delivery.qos)
        if isinstance(prepared, _Pending):
            # The next batch of this unit in the group sees these scans as stored
            # (`hub.history`'s flood bound), as it would if each were committed alone.
            self._group_scans.setdefault(unit_id, {}).update(
                (s.scan_id, to_ms(s.scanned_at)) for s in prepared.verdicts.good if s.hold is None
            )
        return prepared

    def _prepare_batch(
        self, topic: str, unit_id: str, payload: bytes, retained: bool, qos: int
    ) -> list[Reply] | _Pending:
        """Read and judge a batch: what to store (`_Pending`), or the answer already."""
        if not payload:
            # Nothing to keep and nobody to answer: the hub's own clearing of a retained
            # batch (below) comes back to it like this, live or at a subscribe.
            return []
        # Kept by the broker, a retained batch would come back at every subscribe: clear it,
        # whatever it holds.
        replies = [Reply(topic, b"", retain=True)] if retained else []
        try:
            read = read_batch(unit_id, payload)
        except Refusal as refusal:  # nobody to answer: kept whole
            self._dead_letter(topic, payload, refusal)
            return replies
        if retained:
            read.refusal = Refusal("retained", "a scan batch must not be published retained")
        elif qos != 1:
            read.refusal = Refusal(
                "not_qos1", f"a scan batch must be published at QoS 1, not {qos}"
            )
        now = self._now()
        if read.refusal is not None:
            return replies + self._refuse_whole(topic, payload, read, read.refusal)
        verdicts = self._verdicts(topic, read, now)
        key = BatchKey(
            read.batch_id,
            unit_id,
            hashlib.sha256("\n".join(sorted(read.scan_ids)).encode()).hexdigest(),
        )
        return _Pending(topic, payload, read, verdicts, key, now, replies)

    def _finish_batch(
        self, prepared: _Pending, result: InsertResult | BatchConflict
    ) -> list[Reply]:
        """The answer to a batch whose store transaction committed (or refused it whole)."""
        topic, payload, read = prepared.topic, prepared.payload, prepared.read
        replies = prepared.replies
        if isinstance(result, BatchConflict):
            conflict = Refusal("batch_conflict", str(result))
            return replies + self._refuse_whole(topic, payload, read, conflict)
        self.counters.scans_stored += len(result.new)
        self.counters.scans_duplicate += len(result.duplicate)
        verdicts = prepared.verdicts
        if self._metrics is not None:
            self._observe(verdicts.good, set(result.new), prepared.now)
        conflicts = [
            (
                scan_id,
                Refusal("scan_id_conflict", "this scan id was stored before with other content"),
            )
            for scan_id in result.conflict
        ]
        for scan_id, why in conflicts:
            log.error(
                "scan %s from %s: its id was stored before with other content",
                scan_id,
                read.unit_id,
            )
            self._count(why)
        if result.replayed:
            # Harmless (every scan is already safe, and the unit is told so) but worth a
            # record: an honest unit never sends a batch id twice, a broker redelivery does.
            self._dead_letter(
                topic, payload, Refusal("replayed_batch", "this batch arrived before")
            )
        kept = set(result.conflict)
        stored = [s.scan_id for s in verdicts.good if s.scan_id not in kept]
        return replies + self._replies(read, stored, verdicts.refused + conflicts, None)

    def _verdicts(self, topic: str, read: ReadBatch, now: datetime) -> _Verdicts:
        """Judge each scan alone: an exception in one refuses that one, not its neighbours."""
        verdicts = _Verdicts()
        for refused in read.refused:
            self._refused_scan(verdicts, topic, refused.scan_id, refused.refusal, refused.raw)
        if not read.scans:
            return verdicts
        with _storing():
            unit = self._unit(read.unit_id)
            venues = {
                venue_id: self._venue_known(venue_id)
                for venue_id in {r.scan.venue_id for r in read.scans}
            }
        candidates: list[StoredScan] = []
        for item in read.scans:
            try:
                scan = dated(item.scan, read.head, now)
                candidates.append(
                    self._judge.judge(read.unit_id, unit, venues, scan, now, item.wire)
                )
            except Refusal as refusal:
                self._refused_scan(verdicts, topic, item.scan.scan_id, refusal, item.wire)
            except Exception as exc:
                log.exception("judging scan %s failed; it is refused", item.scan.scan_id)
                self._refused_scan(verdicts, topic, item.scan.scan_id, _internal(exc), item.wire)
        if candidates:
            history, counted = self._history(read.unit_id, unit, candidates)
            held: list[StoredScan] = []
            for stored in sorted(candidates, key=lambda s: s.scanned_at):
                # A scan the history already holds (stored before, its ack lost, or
                # earlier in this group) is not counted twice: a resend must not crowd
                # new scans out of the flood bound.
                hold = (
                    None
                    if stored.scan_id in counted
                    else hold_of(to_ms(stored.scanned_at), history)
                )
                if hold is not None:
                    stored = replace(stored, hold=hold)
                    held.append(stored)
                verdicts.good.append(stored)
            if held:
                self.counters.scans_held += len(held)
                log.warning(
                    "%d scans of %s held apart from traces, e.g. %s: %s",
                    len(held),
                    read.unit_id,
                    held[0].scan_id,
                    held[0].hold.reason if held[0].hold else "",
                )
        return verdicts

    def _unit(self, unit_id: str) -> UnitRecord | None:
        unit = self._units.get(unit_id)
        if unit is None:
            unit = self._store.unit(unit_id)
            if unit is not None:
                self._units[unit_id] = unit
        return unit

    def _venue_known(self, venue_id: str) -> bool:
        if venue_id not in self._venues and self._store.venue(venue_id) is not None:
            self._venues.add(venue_id)  # venues are never deleted
        return venue_id in self._venues

    def _history(
        self, unit_id: str, unit: UnitRecord | None, scans: list[StoredScan]
    ) -> tuple[UnitHistory, set[str]]:
        """The unit's history for `hold_of`, and the ids of the traced scans it counts."""
        times = [to_ms(s.scanned_at) for s in scans]
        window_ms = RATE_WINDOW_S * 1000
        with _storing():
            if unit_id in self._drained:
                drained = self._drained[unit_id]
            else:
                drained = (
                    None if self._statuses is None else self._statuses.unit_drained_at(unit_id)
                )
                self._drained[unit_id] = drained
            # Read only for the flood bound; with none set (a lab), nothing to compare.
            nearby = (
                self._store.unit_traced_scans(
                    unit_id, min(times) - window_ms, max(times) + window_ms
                )
                if self._max_per_window
                else {}
            )
        # This group's earlier batches of the unit, as if each had been committed alone.
        nearby.update(self._group_scans.get(unit_id, {}))
        registered = None if unit is None or unit.registered_at is None else unit.registered_at
        history = UnitHistory(
            None if registered is None else to_ms(registered),
            None if drained is None else to_ms(drained),
            sorted(nearby.values()),
            self._max_per_window,
        )
        return history, set(nearby)

    def _refused_scan(
        self, verdicts: _Verdicts, topic: str, scan_id: str, refusal: Refusal, raw: bytes
    ) -> None:
        verdicts.refused.append((scan_id, refusal))
        self._count(refusal)
        if refusal.code in RETRY_CODES:
            # The unit keeps it and sends it again: nothing to keep here, only to say.
            self.counters.scans_deferred += 1
            self._warn_once_a_minute(refusal, topic)
            return
        self.counters.scans_refused += 1
        self.counters.dead_letters += 1
        if self._metrics is not None:
            self._metrics.dead_letters.inc()
        verdicts.letters.append(
            NewDeadLetter("mqtt", topic[:1024], raw, refusal.code, refusal.reason)
        )

    def _refuse_whole(
        self, topic: str, payload: bytes, read: ReadBatch, refusal: Refusal
    ) -> list[Reply]:
        self._count(refusal)
        if refusal.code in RETRY_CODES:
            self._warn_once_a_minute(refusal, topic)
        else:
            self._dead_letter(topic, payload, refusal, count=False)
        return self._replies(read, [], [], refusal)

    def _replies(
        self,
        read: ReadBatch,
        stored: list[str],
        refused: list[tuple[str, Refusal]],
        whole: Refusal | None,
    ) -> list[Reply]:
        ack = answer(read, stored, refused, whole, self._now())
        if ack is None:
            return []
        if self._metrics is not None:
            self._metrics.acks_sent.inc()
        return [Reply(topic_ack(read.unit_id), encode_message(ack))]

    def _observe(self, stored: list[StoredScan], new: set[str], now: datetime) -> None:
        assert self._metrics is not None
        self._metrics.scans_ingested.inc(len(new))
        for scan in stored:
            # An untrusted clock's time was set by the hub itself (`dated`): no lag to see.
            if scan.scan_id in new and scan.clock_trusted and scan.hold is None:
                self._metrics.observe_lag((now - scan.scanned_at).total_seconds())

    # -- keeping what was refused --------------------------------------------------------

    def _count(self, refusal: Refusal) -> None:
        self.counters.refusals[refusal.code] = self.counters.refusals.get(refusal.code, 0) + 1

    def _warn_once_a_minute(self, refusal: Refusal, topic: str) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(refusal.code, -60.0) >= 60.0:
            self._warned_at[refusal.code] = now
            log.warning(
                "not now (%s) on %s: %s; the unit keeps it",
                refusal.code,
                topic[:200],
                refusal.reason,
            )

    def _dead_letter(
        self, topic: str, payload: bytes, refusal: Refusal, *, count: bool = True
    ) -> None:
        if count:
            self._count(refusal)
        self.counters.dead_letters += 1
        if self._metrics is not None:
            self._metrics.dead_letters.inc()
        log.warning("dead letter from %s: %s", topic[:200], refusal)
        reason, kept = refusal.reason, payload
        if len(payload) > MAX_MESSAGE_BYTES:
            # Kept whole, one oversize message is as large again in the database.
            digest = hashlib.sha256(payload).hexdigest()
            kept = payload[:DEAD_LETTER_PREFIX_BYTES]
            reason = (
                f"{reason}; kept the first {len(kept)} of {len(payload)} bytes, sha256 {digest}"
            )
        with _storing():
            self._store.add_dead_letter(
                source="mqtt",
                topic=topic[:1024],
                payload=kept,
                code=refusal.code,
                reason=reason,
                received_at=self._now(),
            )


@contextmanager
def _storing() -> Iterator[None]:
    """Whatever the store raises becomes `StoreFailure`: the one thing `handle` lets out."""
    try:
        yield
    except StoreFailure:
        raise
    except Exception as exc:
        raise StoreFailure(f"the store failed: {type(exc).__name__}: {exc}"[:300]) from exc


def _internal(exc: Exception) -> Refusal:
    return Refusal("internal_error", f"the hub failed on it ({type(exc).__name__}); see its log")


def describe(counters: IngestCounters) -> str:
    """One JSON line for logs and the demo."""
    return json.dumps(counters.__dict__, sort_keys=True)
