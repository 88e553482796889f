"""The hub's store interface: every scan once, the registry, dead letters, the access log.

The ingest thread writes here; trace, visitors and reports read. The interface is
`Store`, a union of four small protocols, so that a PostgreSQL backend can follow
`SqliteStore` without touching its callers:

    >>> with SqliteStore(tmp_path / "hub.db", vault=vault) as store:  # doctest: +SKIP
    ...     store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
    ...     result = store.insert_scans(scans, received_at=now)   # one transaction
    ...     result.new, result.duplicate                          # resent scans: duplicate
    ...     store.checkins_at("cho-pleiku", start_ms, end_ms)     # an index range scan

What is promised:

- `insert_scans()` is one transaction, all or nothing, and idempotent on `scan_id`: a
  resent scan is stored once and reported in `duplicate`. It returns only after the
  commit, with ``synchronous=FULL`` in WAL mode, so the commit is on disk: the hub
  acks a unit only after this returns, and the unit then forgets the scan.
- Identities are sealed at rest and people are filed under a keyed pseudonym
  (`hub.vault`): the store needs the hub's vault to open, refuses a file written with
  another, and reads return clear values, so callers never see the difference. A
  dead letter's payload and reason are sealed too; its code, source and topic are not.
- Times are integer milliseconds since the epoch (`doorscan.timefmt.to_ms`), so that a
  trace is an integer range scan on ``(venue_id, scanned_at_ms)`` or
  ``(person_key, scanned_at_ms)`` (the key's pseudonym, in the store).
- The schema version is ``PRAGMA user_version``; migrations are applied in order when
  the store opens, each in its own transaction. A file written by a newer doorscan is
  refused (`StoreError`) rather than read wrongly.
- The audit log is a hash chain with its head kept beside it (`hub.audit`):
  `record_audit()` chains inside its insert transaction, `verify_audit()` finds an
  edited, deleted, moved or cut-off entry. `purge_older_than()` forgets scans, dead
  letters and batch ids older than a cutoff, never the audit log (`hub.retention`).

Threads and processes: one connection (``check_same_thread=False``) behind one lock
per store object, because the MQTT ingest thread writes while the process may also
read. Other processes (the `doorscan-hub` commands) open their own store; WAL lets
them read while ingest writes, and ``busy_timeout`` makes writers wait their turn.

Portability: queries are plain SQL that PostgreSQL also runs (``ON CONFLICT DO
NOTHING``, ``BIGINT`` times, no SQLite functions); only the DDL, the PRAGMAs and the
``?`` placeholders are SQLite's, and they live in `SqliteStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from doorscan.errors import DoorscanError
from doorscan.payloads import Identity
from doorscan.wire import UnitRecord, VenueRecord
from hub.audit import AuditVerification

__all__ = [
    "AuditEntry",
    "Checkin",
    "DeadLetter",
    "InsertResult",
    "StoredScan",
    "StoreError",
    "BatchKey",
    "BatchConflict",
    "Registry",
    "ScanSink",
    "CheckinReader",
    "AuditLog",
    "AuditVerification",
    "Retention",
    "Store",
]


class StoreError(DoorscanError, RuntimeError):
    """The store cannot be used as asked (a file from a newer doorscan, a closed store)."""


@dataclass(frozen=True)
class StoredScan:
    """A judged scan, ready to store. `scanned_at` is aware (UTC)."""

    scan_id: str
    unit_id: str | None
    venue_id: str
    scanned_at: datetime
    clock_trusted: bool
    identity: Identity
    source: Literal["mqtt", "csv"]


@dataclass(frozen=True)
class Checkin:
    """One stored scan as trace and visitor lists see it."""

    scan_id: str
    person_key: str
    venue_id: str
    at_ms: int
    kind: str
    id_number: str
    name: str


@dataclass(frozen=True)
class InsertResult:
    new: list[str]
    duplicate: list[str]
    replayed: bool = False  # this very batch (same id, same scans) was committed before


@dataclass(frozen=True)
class BatchKey:
    """Names a unit's batch so a copy of it can be recognised (see `insert_scans`)."""

    batch_id: str
    unit_id: str
    digest: str  # of the batch's scan ids, so a reused id with other scans is told apart


class BatchConflict(StoreError, ValueError):
    """A batch id arrived again with different scans: never from an honest unit."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_at: datetime
    source: str
    topic: str
    code: str
    reason: str
    payload: bytes


@dataclass(frozen=True)
class AuditEntry:
    """One read of identities: who asked is the OS user's business; why is `reason`.

    `prev_hash` and `hash` chain the entries (`hub.audit`); they are filled by the store.
    """

    id: int
    at: datetime
    action: str
    reason: str
    params: dict[str, Any]
    prev_hash: str = ""
    hash: str = ""


class Registry(Protocol):
    def upsert_venue(self, venue: VenueRecord) -> None: ...
    def upsert_unit(self, unit: UnitRecord) -> None: ...
    def venue(self, venue_id: str) -> VenueRecord | None: ...
    def unit(self, unit_id: str) -> UnitRecord | None: ...
    def venues(self) -> list[VenueRecord]: ...


class ScanSink(Protocol):
    def insert_scans(
        self, scans: Sequence[StoredScan], received_at: datetime, batch: BatchKey | None = None
    ) -> InsertResult: ...
    def add_dead_letter(
        self, source: str, topic: str, payload: bytes, code: str, reason: str, received_at: datetime
    ) -> None: ...
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...


class CheckinReader(Protocol):
    """What the trace engine needs: two indexed range queries, a name lookup, a pseudonym.

    Callers speak in clear person keys; the store files people under `pseudonym`
    (`hub.vault.Vault.blind`), which is also how the audit log names whom a trace was about.
    """

    def checkins_of(self, person_key: str, since_ms: int, until_ms: int) -> list[Checkin]: ...
    def checkins_at(self, venue_id: str, start_ms: int, end_ms: int) -> list[Checkin]: ...
    def person(self, person_key: str) -> tuple[str, str] | None: ...
    def pseudonym(self, person_key: str) -> str: ...


class AuditLog(Protocol):
    def record_audit(
        self, action: str, reason: str, params: dict[str, Any], at: datetime
    ) -> int: ...
    def audit_entries(self, limit: int = 100) -> list[AuditEntry]: ...
    def verify_audit(self) -> AuditVerification: ...


class Retention(Protocol):
    """Forgetting old data. The audit log is never purged here (see `purge_older_than`)."""

    def purge_older_than(
        self, cutoff: datetime, *, at: datetime | None = None, reason: str = "retention"
    ) -> dict[str, int]: ...


class Store(Registry, ScanSink, CheckinReader, AuditLog, Retention, Protocol):
    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
