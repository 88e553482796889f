"""The hub's store interface: every scan once, the registry, dead letters, the access log.

The ingest thread writes here; trace, visitors and reports read. The interface is
`Store`, a union of small protocols; `HubStore` adds the operators (`UserStore`) and
the reports (`ReportStore`). `SqliteStore` and `PostgresStore` both are one, opened
by `hub.store.factory.open_hub_store` from a path or a ``postgresql://`` URL:

    >>> with open_hub_store("hub.db", vault=vault) as store:  # doctest: +SKIP
    ...     store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
    ...     result = store.insert_scans(scans, received_at=now)   # one transaction
    ...     result.new, result.duplicate                          # resent scans: duplicate
    ...     store.checkins_at("cho-pleiku", start_ms, end_ms)     # an index range scan

What is promised:

- `insert_scans()` is one transaction, all or nothing, with the dead letters of the
  batch's refused scans, and idempotent on `scan_id`: a resent scan is stored once and
  reported in `duplicate`. A scan id already stored with other content (a keyed digest
  of the scan as its unit sent it, `StoredScan.digest_basis`) is a `conflict`: not
  stored, dead-lettered ``scan_id_conflict`` in the same transaction, never reported as
  stored. It returns only after the commit, with ``synchronous=FULL`` in WAL mode, so
  the commit is on disk: the hub acks a unit only after this returns, and the unit then
  forgets the scan (PostgreSQL: ``synchronous_commit`` on).
- A scan with a `Hold` is kept apart, in ``held_scans``: stored (its id taken, its
  identity sealed), never read by a trace, a visitor list or a report, listed for an
  admin (`held_scans`) who may `release_held` it into the scans.
- Identities are sealed at rest and people are filed under a keyed pseudonym
  (`hub.vault`): the store needs the hub's vault to open, refuses a file written with
  another, and reads return clear values, so callers never see the difference. A
  dead letter's payload and reason are sealed too; its code, source and topic are not.
- Times are integer milliseconds since the epoch (`doorscan.timefmt.to_ms`), so that a
  trace is integer range scans on ``(venue_id, scanned_at_ms, ...)`` and
  ``(person_key, scanned_at_ms, ...)`` (the key's pseudonym, in the store), read from
  those indexes alone (`TraceReader`).
- Migrations are versioned and applied in order when the store opens, each in its
  own transaction. A database written by a newer doorscan is refused (`StoreError`)
  rather than read wrongly.
- The audit log is a hash chain with its head kept beside it (`hub.audit`):
  `record_audit()` chains inside its insert transaction, `verify_audit()` finds an
  edited, deleted, moved or cut-off entry. `purge_older_than()` forgets scans, dead
  letters and batch ids older than a cutoff, never the audit log (`hub.retention`).

Threads and processes: one connection behind one lock per store object, because the
MQTT ingest thread writes while the process may also read. Other processes (the
`doorscan-hub` commands, other hub workers) open their own store.

Portability: queries are plain SQL that both backends run (``ON CONFLICT DO NOTHING``,
``RETURNING``, ``BIGINT`` times, no engine functions); they live once, in
`hub.store.common_store` and its neighbours. Each backend keeps only its DDL, its
connection handling, and how scans are filed and purged.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from doorscan.errors import DoorscanError
from doorscan.payloads import Identity
from doorscan.wire import UnitRecord, VenueRecord
from hub.audit import AuditVerification

__all__ = [
    "AuditEntry",
    "Checkin",
    "CheckinRef",
    "TraceReader",
    "DeadLetter",
    "InsertResult",
    "StoredScan",
    "StoreError",
    "StoreUnavailable",
    "BatchKey",
    "BatchConflict",
    "BatchInsert",
    "Hold",
    "HeldScan",
    "NewDeadLetter",
    "StoredUnitConfig",
    "Registry",
    "ScanSink",
    "CheckinReader",
    "AuditLog",
    "AuditVerification",
    "Retention",
    "Store",
    "UserExists",
    "StoredUser",
    "StoredToken",
    "UserStore",
    "StoredUnitStatus",
    "UnitScanSummary",
    "DayCount",
    "VenueLastScan",
    "ReportStore",
    "HubStore",
]


class StoreError(DoorscanError, RuntimeError):
    """The store cannot be used as asked (a file from a newer doorscan, a closed store)."""


class StoreUnavailable(StoreError):
    """The database server cannot be reached now (down, restarting, failing over): try later.

    Nothing of the call is known to be committed. If the connection was lost during the
    commit itself, it may have been: a write retried after this must be idempotent, as
    storing scans is (by ``scan_id``)."""


@dataclass(frozen=True)
class Hold:
    """Why a scan is kept apart from traces (`hub.history`): a rule's code and words."""

    code: str
    reason: str


@dataclass(frozen=True)
class StoredScan:
    """A judged scan, ready to store. `scanned_at` is aware (UTC).

    `digest_basis` is the scan as its unit sent it (its canonical wire bytes, before
    the hub corrected a time); the store keeps a keyed digest of it, so that the same
    scan sent again is a duplicate and another scan under the same id a conflict. CSV
    rows have none (their id is made from their content).
    """

    scan_id: str
    unit_id: str | None
    venue_id: str
    scanned_at: datetime
    clock_trusted: bool
    identity: Identity
    source: Literal["mqtt", "csv"]
    digest_basis: bytes | None = None
    hold: Hold | None = None


@dataclass(frozen=True)
class NewDeadLetter:
    """A refused message or scan to keep, written in the transaction that settles its batch."""

    source: str
    topic: str
    payload: bytes
    code: str
    reason: str


@dataclass(frozen=True)
class HeldScan:
    """A scan kept apart from traces, as an admin sees it: where, when, why; never who."""

    scan_id: str
    unit_id: str | None
    venue_id: str
    scanned_at: datetime
    received_at: datetime
    code: str
    reason: str


@dataclass(frozen=True)
class StoredUnitConfig:
    """The latest remote config the hub issued to a unit (`hub unit-config`)."""

    unit_id: str
    version: int
    settings: dict[str, Any]
    issued_at: datetime


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


CheckinRef = tuple[str, int, str, str]
"""A check-in as the trace's covering indexes hold it: ``(venue_id, at_ms, scan_id, pseudonym)``.

Who only by pseudonym, no identity: the trace engine walks these and opens only the
check-ins it reports (`TraceReader.open_checkins`). A plain tuple, not a dataclass: an
F2 trace reads a hundred thousand of them and unpacks each once.
"""


@dataclass(frozen=True)
class InsertResult:
    new: list[str]
    duplicate: list[str]
    replayed: bool = False  # this very batch (same id, same scans) was committed before
    conflict: list[str] = field(default_factory=list)  # id stored before with other content


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
    size: int = -1  # the payload's length; kept when the payload itself is left out

    def __post_init__(self) -> None:
        if self.size < 0:
            object.__setattr__(self, "size", len(self.payload))

    def without_payload(self) -> DeadLetter:
        """The letter as an operator sees it without a reason: its size, not its bytes."""
        return replace(self, payload=b"", size=self.size)


@dataclass(frozen=True)
class AuditQuery:
    """Which audit entries to list: by account (the principal's or the event's), action
    and period; None leaves a field open."""

    account: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One audited event: an identity read, a refusal, a login, a purge...

    Who is in ``params["principal"]`` (or ``params["account"]`` for account events);
    why is `reason`, which the store keeps encrypted and hands back opened.
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
    def set_fleet_keys(self, keys_json: str, received_at: datetime) -> None:
        """Keep the fleet's `FleetKeys` message (its JSON) as last received."""

    def fleet_keys(self) -> tuple[str, datetime] | None:
        """The `FleetKeys` JSON last received and when, or None if none ever came."""

    def forget_fleet_keys(self) -> bool:
        """Drop the kept `FleetKeys` (True if there was one): the next that arrives counts."""


@dataclass(frozen=True)
class BatchInsert:
    """One unit batch's share of a group commit (`ScanSink.insert_batches`)."""

    scans: Sequence[StoredScan]
    batch: BatchKey
    letters: Sequence[NewDeadLetter] = ()


class ScanSink(Protocol):
    def insert_scans(
        self,
        scans: Sequence[StoredScan],
        received_at: datetime,
        batch: BatchKey | None = None,
        letters: Sequence[NewDeadLetter] = (),
    ) -> InsertResult: ...
    def insert_batches(
        self, batches: Sequence[BatchInsert], received_at: datetime
    ) -> list[InsertResult | BatchConflict]:
        """`insert_scans` for each batch, in order, all in one transaction (one commit).

        A batch whose id was received before with other scans stores nothing and its
        place in the answer is the `BatchConflict`; the others are stored. Anything
        else that fails rolls the whole group back and raises.
        """
        ...

    def add_dead_letter(
        self, source: str, topic: str, payload: bytes, code: str, reason: str, received_at: datetime
    ) -> None: ...
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...
    def remove_dead_letters(self, letter_ids: Sequence[int]) -> int: ...
    def held_scans(self, limit: int = 100) -> list[HeldScan]: ...
    def release_held(self, scan_ids: Sequence[str]) -> list[str]: ...
    def unit_traced_scans(self, unit_id: str, since_ms: int, until_ms: int) -> dict[str, int]: ...


class TraceReader(Protocol):
    """The trace's reads, all in one read snapshot (`CheckinReader.trace_reader`).

    Check-ins come back as `CheckinRef` straight from the covering indexes, in no
    promised order; identities are opened only for what is asked (`open_checkins`).
    """

    def visits_of(
        self, pseudonyms: Collection[str], since_ms: int, until_ms: int
    ) -> list[CheckinRef]:
        """Every check-in of these people with since <= time <= until."""

    def checkins_in_windows(
        self, windows: Mapping[str, Sequence[tuple[int, int]]]
    ) -> list[CheckinRef]:
        """Every check-in at each venue with start <= time <= end for one of its windows.

        `windows` maps a venue id to disjoint ``(start_ms, end_ms)`` intervals; a
        check-in in two overlapping ones would come back twice.
        """

    def open_checkins(self, refs: Collection[CheckinRef]) -> dict[str, Checkin]:
        """The clear check-ins of `refs`, by scan id; each identity checked to be its row's."""

    def person(self, person_key: str) -> tuple[str, str] | None:
        """(id_number, name) from the person's latest scan, or None if never seen."""

    def pseudonym(self, person_key: str) -> str:
        """The name the store files a person under (`hub.vault.Vault.blind`)."""


class CheckinReader(Protocol):
    """What trace and visitor lists need: indexed range queries, a name lookup, a pseudonym.

    Callers speak in clear person keys; the store files people under `pseudonym`
    (`hub.vault.Vault.blind`), which is also how the audit log names whom a trace was about.
    A trace reads through `trace_reader`: one read snapshot, so that scans arriving while
    it runs cannot make one degree disagree with the next.
    """

    def checkins_of(self, person_key: str, since_ms: int, until_ms: int) -> list[Checkin]: ...
    def checkins_at(self, venue_id: str, start_ms: int, end_ms: int) -> list[Checkin]: ...
    def trace_reader(self) -> AbstractContextManager[TraceReader]:
        """A `TraceReader` valid inside the ``with`` block, all of it one read snapshot.

        It reads on a connection apart from the one ingest writes on, so ingest goes on;
        traces of one store take turns on it: keep a block to one trace.
        """

    def person(self, person_key: str) -> tuple[str, str] | None: ...
    def pseudonym(self, person_key: str) -> str: ...


class AuditLog(Protocol):
    def record_audit(
        self, action: str, reason: str, params: dict[str, Any], at: datetime
    ) -> int: ...
    def audit_entries(
        self, limit: int = 100, query: AuditQuery | None = None
    ) -> list[AuditEntry]: ...
    def verify_audit(self) -> AuditVerification: ...
    def audit_hash_at(self, entry_id: int) -> str | None: ...


class Retention(Protocol):
    """Forgetting old data. The audit log is never purged here (see `purge_older_than`)."""

    def purge_older_than(
        self,
        cutoff: datetime,
        *,
        at: datetime | None = None,
        reason: str = "retention",
        by: dict[str, Any] | None = None,
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


# -- the hub's operators (hub.auth) ------------------------------------------------------------


class UserExists(StoreError, ValueError):
    """A user id that is already taken."""


@dataclass(frozen=True)
class StoredUser:
    """A ``users`` row as stored: the password only as its self-describing hash."""

    user_id: str
    display_name: str
    role: str
    venue_id: str | None
    password_hash: str
    active: bool
    created_at_ms: int


@dataclass(frozen=True)
class StoredToken:
    """A ``tokens`` row: the token itself is never stored, only its SHA-256 hex."""

    token_hash: str
    user_id: str
    kind: str  # "session" or "api"
    created_at_ms: int
    expires_at_ms: int
    revoked: bool


class UserStore(Protocol):
    """What `hub.auth` needs from a store."""

    def add_user(self, user: StoredUser) -> None: ...
    def user(self, user_id: str) -> StoredUser | None: ...
    def users(self) -> list[StoredUser]: ...
    def set_user_active(self, user_id: str, active: bool) -> bool: ...
    def add_token(self, token: StoredToken) -> None: ...
    def token(self, token_hash: str) -> StoredToken | None: ...
    def revoke_token(self, token_hash: str) -> bool: ...
    def set_password_hash(self, user_id: str, password_hash: str) -> bool: ...
    def set_user_role(self, user_id: str, role: str, venue_id: str | None) -> bool: ...
    def tokens_of(self, user_id: str) -> list[StoredToken]: ...
    def reserve_login(
        self, limits: Sequence[tuple[str, int]], now_ms: int, window_ms: int
    ) -> tuple[int, list[int]]: ...
    def settle_login(self, reserved: Sequence[int], succeeded_key: str | None) -> None: ...
    def clear_login_failures(self, key: str) -> int: ...
    def login_failure_counts(self, since_ms: int) -> dict[str, int]: ...


# -- counts and unit health (hub.reports, the units page, the name search) ---------------------


@dataclass(frozen=True)
class StoredUnitStatus:
    """A ``unit_status`` row: the unit's latest status message, as it came (JSON)."""

    unit_id: str
    received_at: datetime
    online: bool
    status_json: str


@dataclass(frozen=True)
class UnitScanSummary:
    """A registered unit and what its scans say about it."""

    unit_id: str
    venue_id: str
    active: bool
    last_scan: datetime | None
    last_clock_trusted: bool | None  # of the newest scan; None without scans


@dataclass(frozen=True)
class DayCount:
    day: date  # Vietnam time
    key: str  # a venue id or a district
    scans: int


@dataclass(frozen=True)
class VenueLastScan:
    venue_id: str
    name: str
    district: str
    last_scan: datetime | None


class ReportStore(Protocol):
    """What `hub.reports`, the metrics and the name search need from a store."""

    def upsert_unit_status(
        self,
        unit_id: str,
        received_at: datetime,
        online: bool,
        status_json: str,
        drained_at: datetime | None = None,
    ) -> None: ...
    def unit_drained_at(self, unit_id: str) -> datetime | None: ...
    def record_unit_config(
        self, unit_id: str, version: int, settings: dict[str, Any], issued_at: datetime
    ) -> StoredUnitConfig: ...
    def unit_config(self, unit_id: str) -> StoredUnitConfig | None: ...
    def unit_statuses(self) -> list[StoredUnitStatus]: ...
    def unit_scan_summaries(self) -> list[UnitScanSummary]: ...
    def units_online(self) -> int: ...
    def scans_per_day(
        self,
        since: date,
        until: date,
        by: Literal["venue", "district"],
        venue_id: str | None = None,
    ) -> list[DayCount]: ...
    def venues_last_scan(self, before: datetime) -> list[VenueLastScan]: ...
    def person_keys_by_name(self, folded: str) -> list[str]: ...


class HubStore(Store, UserStore, ReportStore, Protocol):
    """Everything the hub asks of its database: what `open_hub_store` returns."""
