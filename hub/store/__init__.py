"""The hub's store: the interface (`base`) and its backends, SQLite and PostgreSQL.

Callers import from here: ``from hub.store import HubStore, Store, StoredScan``, and open
a store with `hub.store.factory.open_hub_store` (a path or a ``postgresql://`` URL).
`PostgresStore` is not imported here, so that a SQLite hub runs without psycopg.
"""

from hub.store.base import (
    AuditEntry,
    AuditLog,
    AuditVerification,
    BatchConflict,
    BatchKey,
    Checkin,
    CheckinReader,
    DayCount,
    DeadLetter,
    HubStore,
    InsertResult,
    Registry,
    ReportStore,
    Retention,
    ScanSink,
    SealedCheckin,
    Store,
    StoredScan,
    StoredToken,
    StoredUnitStatus,
    StoredUser,
    StoreError,
    UnitScanSummary,
    UserExists,
    UserStore,
    VenueLastScan,
)
from hub.store.sqlite import SqliteStore

__all__ = [
    "AuditEntry",
    "AuditLog",
    "AuditVerification",
    "BatchConflict",
    "BatchKey",
    "Checkin",
    "SealedCheckin",
    "CheckinReader",
    "DayCount",
    "DeadLetter",
    "HubStore",
    "InsertResult",
    "Registry",
    "ReportStore",
    "Retention",
    "ScanSink",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoredScan",
    "StoredToken",
    "StoredUnitStatus",
    "StoredUser",
    "UnitScanSummary",
    "UserExists",
    "UserStore",
    "VenueLastScan",
]
