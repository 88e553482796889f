"""The hub's store: the interface (`base`) and its backends (`sqlite`; PostgreSQL next).

Callers import from here: ``from hub.store import SqliteStore, Store, StoredScan``.
"""

from hub.store.base import (
    AuditEntry,
    AuditLog,
    AuditVerification,
    BatchConflict,
    BatchKey,
    Checkin,
    CheckinReader,
    DeadLetter,
    InsertResult,
    Registry,
    Retention,
    ScanSink,
    Store,
    StoredScan,
    StoreError,
)
from hub.store.sqlite import SqliteStore

__all__ = [
    "AuditEntry",
    "AuditLog",
    "AuditVerification",
    "BatchConflict",
    "BatchKey",
    "Checkin",
    "CheckinReader",
    "DeadLetter",
    "InsertResult",
    "Registry",
    "Retention",
    "ScanSink",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoredScan",
]
