"""`SqliteStore`: the hub's store on one SQLite file (WAL, synchronous=FULL).

The promises of the interface are in `hub.store.base`; what is SQLite's own (the DDL,
the PRAGMAs, the ``?`` placeholders, one connection behind a lock) lives here, so a
PostgreSQL backend can sit next to this file without touching its callers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from doorscan.lifecycle import Closeable
from doorscan.timefmt import format_rfc3339, from_ms, to_ms
from doorscan.wire import UnitRecord, VenueRecord
from hub.audit import GENESIS_HASH, AuditHead, AuditRow, AuditVerification, entry_hash, verify_chain
from hub.store.base import (
    AuditEntry,
    BatchConflict,
    BatchKey,
    Checkin,
    DeadLetter,
    InsertResult,
    StoredScan,
    StoreError,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]


_CHECKIN_COLUMNS = "scan_id, person_key, venue_id, scanned_at_ms, kind, id_number, name"
_AUDIT_COLUMNS = "id, at_ms, action, reason, params_json, prev_hash, hash"

# A migration step is SQL, or a function for what SQL cannot do (hashing existing rows).
Step = str | Callable[[sqlite3.Connection], None]


def _chain_existing_audit(conn: sqlite3.Connection) -> None:
    """Hash the entries written before the chain existed, in id order, and set the head."""
    prev_hash, last_id, count = GENESIS_HASH, None, 0
    rows = conn.execute(
        "SELECT id, at_ms, action, reason, params_json FROM audit ORDER BY id"
    ).fetchall()
    for id_, at_ms, action, reason, params_json in rows:
        digest = entry_hash(id_, at_ms, action, reason, params_json, prev_hash)
        conn.execute(
            "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev_hash, digest, id_)
        )
        prev_hash, last_id, count = digest, id_, count + 1
    conn.execute(
        "INSERT INTO audit_head (one_row, last_id, last_hash, entries) VALUES (1, ?, ?, ?)",
        (last_id, prev_hash, count),
    )


# Times are BIGINT: milliseconds overflow PostgreSQL's 32-bit INTEGER (SQLite does not care).
_MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    # 1: registry, scans, dead letters.
    (
        """CREATE TABLE venues (
            venue_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            address TEXT NOT NULL DEFAULT '',
            district TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE units (
            unit_id TEXT PRIMARY KEY,
            venue_id TEXT NOT NULL REFERENCES venues (venue_id),
            active BOOLEAN NOT NULL
        )""",
        """CREATE TABLE scans (
            scan_id TEXT PRIMARY KEY,
            unit_id TEXT NULL REFERENCES units (unit_id),
            venue_id TEXT NOT NULL REFERENCES venues (venue_id),
            scanned_at_ms BIGINT NOT NULL,
            clock_trusted BOOLEAN NOT NULL,
            person_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            id_number TEXT NOT NULL,
            name TEXT NOT NULL,
            birth_date TEXT,
            sex TEXT,
            address TEXT,
            source TEXT NOT NULL CHECK (source IN ('mqtt', 'csv')),
            received_at_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX scans_by_venue_time ON scans (venue_id, scanned_at_ms)",
        "CREATE INDEX scans_by_person_time ON scans (person_key, scanned_at_ms)",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at_ms BIGINT NOT NULL,
            source TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            code TEXT NOT NULL,
            reason TEXT NOT NULL
        )""",
    ),
    # 2: the access log: every read of identities (trace, visitor lists) with its reason.
    (
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at_ms BIGINT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT NOT NULL,
            params_json TEXT NOT NULL
        )""",
    ),
    # 3: batch ids seen, to tell a copy of a batch (redelivered or replayed) from a new one.
    (
        """CREATE TABLE batches (
            batch_id TEXT PRIMARY KEY,
            unit_id TEXT NOT NULL,
            digest TEXT NOT NULL,
            received_at_ms BIGINT NOT NULL
        )""",
    ),
    # 4: the audit log becomes a hash chain (hub.audit), with its head kept beside it so
    # that deleting the newest entries shows too. Entries written before are chained here.
    (
        "ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE audit_head (
            one_row INTEGER PRIMARY KEY CHECK (one_row = 1),
            last_id BIGINT NULL,
            last_hash TEXT NOT NULL,
            entries BIGINT NOT NULL
        )""",
        _chain_existing_audit,
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class SqliteStore(Closeable):
    """`Store` on one SQLite file (or ``":memory:"`` for tests)."""

    MIGRATIONS = _MIGRATIONS

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        is_new = self.path != ":memory:" and not Path(self.path).exists()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        try:
            self._setup(self._conn, int(busy_timeout_ms))
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        if is_new:
            # A new file's directory entry must be durable too, or a power cut forgets it.
            _fsync_dir(Path(self.path).resolve().parent)

    def _setup(self, conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        conn.execute("PRAGMA foreign_keys = ON")
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        if mode not in ("wal", "memory"):
            raise StoreError(f"{self.path}: SQLite refused WAL mode ({mode}); a network drive?")
        conn.execute("PRAGMA synchronous = FULL")
        for number in range(1, len(self.MIGRATIONS) + 1):
            with self._transaction():
                # Read inside the write lock: another process may be migrating the same file.
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version > len(self.MIGRATIONS):
                    raise StoreError(
                        f"{self.path} has hub schema {version}; this doorscan knows up to "
                        f"{len(self.MIGRATIONS)} (was it written by a newer doorscan?)"
                    )
                if version >= number:
                    continue
                for step in self.MIGRATIONS[number - 1]:
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        step(conn)
                conn.execute(f"PRAGMA user_version = {number}")

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so busy_timeout applies at BEGIN and a
        # transaction never fails half-way because another process started writing.
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db().execute(sql, params).fetchall()

    # -- registry --------------------------------------------------------------------

    def upsert_venue(self, venue: VenueRecord) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO venues (venue_id, name, address, district) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (venue_id) DO UPDATE SET name = excluded.name, "
                "address = excluded.address, district = excluded.district",
                (venue.venue_id, venue.name, venue.address, venue.district),
            )

    def upsert_unit(self, unit: UnitRecord) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO units (unit_id, venue_id, active) VALUES (?, ?, ?) "
                "ON CONFLICT (unit_id) DO UPDATE SET venue_id = excluded.venue_id, "
                "active = excluded.active",
                (unit.unit_id, unit.venue_id, unit.active),
            )

    def venue(self, venue_id: str) -> VenueRecord | None:
        rows = self._query(
            "SELECT venue_id, name, address, district FROM venues WHERE venue_id = ?", (venue_id,)
        )
        return _venue(rows[0]) if rows else None

    def unit(self, unit_id: str) -> UnitRecord | None:
        rows = self._query(
            "SELECT unit_id, venue_id, active FROM units WHERE unit_id = ?", (unit_id,)
        )
        if not rows:
            return None
        unit_id, venue_id, active = rows[0]
        return UnitRecord(unit_id=unit_id, venue_id=venue_id, active=bool(active))

    def venues(self) -> list[VenueRecord]:
        rows = self._query("SELECT venue_id, name, address, district FROM venues ORDER BY venue_id")
        return [_venue(row) for row in rows]

    # -- scans and dead letters --------------------------------------------------------

    def insert_scans(
        self, scans: Sequence[StoredScan], received_at: datetime, batch: BatchKey | None = None
    ) -> InsertResult:
        """Store every scan in one transaction; a scan_id already stored is a duplicate.

        With `batch`, the batch id is recorded in the same transaction. The same batch
        arriving again (the broker redelivers after a hub crash, or someone replays it)
        is reported as `replayed`; the same id with other scans raises `BatchConflict`
        and stores nothing. Raises (and stores nothing) if any scan breaks a
        constraint, e.g. names an unknown venue or unit.
        """
        received_ms = to_ms(received_at)
        new: list[str] = []
        duplicate: list[str] = []
        replayed = False
        with self._transaction() as conn:
            if batch is not None:
                cursor = conn.execute(
                    "INSERT INTO batches (batch_id, unit_id, digest, received_at_ms) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (batch_id) DO NOTHING",
                    (batch.batch_id, batch.unit_id, batch.digest, received_ms),
                )
                if cursor.rowcount != 1:
                    (unit_id, digest) = conn.execute(
                        "SELECT unit_id, digest FROM batches WHERE batch_id = ?", (batch.batch_id,)
                    ).fetchone()
                    if (unit_id, digest) != (batch.unit_id, batch.digest):
                        raise BatchConflict(
                            f"batch {batch.batch_id} was received before with other scans"
                        )
                    replayed = True
            for scan in scans:
                who = scan.identity
                cursor = conn.execute(
                    "INSERT INTO scans (scan_id, unit_id, venue_id, scanned_at_ms, clock_trusted, "
                    "person_key, kind, id_number, name, birth_date, sex, address, source, "
                    "received_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (scan_id) DO NOTHING",
                    (
                        scan.scan_id,
                        scan.unit_id,
                        scan.venue_id,
                        to_ms(scan.scanned_at),
                        scan.clock_trusted,
                        who.person_key,
                        who.kind,
                        who.id_number,
                        who.name,
                        who.birth_date,
                        who.sex,
                        who.address,
                        scan.source,
                        received_ms,
                    ),
                )
                (new if cursor.rowcount == 1 else duplicate).append(scan.scan_id)
        return InsertResult(new, duplicate, replayed)

    def add_dead_letter(
        self, source: str, topic: str, payload: bytes, code: str, reason: str, received_at: datetime
    ) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO dead_letters (received_at_ms, source, topic, payload, code, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (to_ms(received_at), source, topic, bytes(payload), code, reason),
            )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest `limit` dead letters, newest first."""
        rows = self._query(
            "SELECT id, received_at_ms, source, topic, code, reason, payload FROM dead_letters "
            "ORDER BY id DESC LIMIT ?",
            (int(limit),),
        )
        return [
            DeadLetter(id, from_ms(at_ms), source, topic, code, reason, bytes(payload))
            for id, at_ms, source, topic, code, reason, payload in rows
        ]

    # -- reads for trace and visitor lists ----------------------------------------------

    def checkins_of(self, person_key: str, since_ms: int, until_ms: int) -> list[Checkin]:
        """The person's check-ins with since <= time <= until, oldest first."""
        rows = self._query(
            f"SELECT {_CHECKIN_COLUMNS} FROM scans WHERE person_key = ? "  # noqa: S608
            "AND scanned_at_ms BETWEEN ? AND ? ORDER BY scanned_at_ms, scan_id",
            (person_key, since_ms, until_ms),
        )
        return [Checkin(*row) for row in rows]

    def checkins_at(self, venue_id: str, start_ms: int, end_ms: int) -> list[Checkin]:
        """The venue's check-ins with start <= time <= end, oldest first."""
        rows = self._query(
            f"SELECT {_CHECKIN_COLUMNS} FROM scans WHERE venue_id = ? "  # noqa: S608
            "AND scanned_at_ms BETWEEN ? AND ? ORDER BY scanned_at_ms, scan_id",
            (venue_id, start_ms, end_ms),
        )
        return [Checkin(*row) for row in rows]

    def person(self, person_key: str) -> tuple[str, str] | None:
        """(id_number, name) from the person's latest scan, or None if never seen."""
        rows = self._query(
            "SELECT id_number, name FROM scans WHERE person_key = ? "
            "ORDER BY scanned_at_ms DESC, scan_id DESC LIMIT 1",
            (person_key,),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    # -- audit -----------------------------------------------------------------------

    def record_audit(self, action: str, reason: str, params: dict[str, Any], at: datetime) -> int:
        """Append an entry to the chain; return its id.

        The head is read and moved inside the insert's write transaction (BEGIN
        IMMEDIATE, under the store's lock), so two writers, threads or processes,
        cannot both chain from the same entry.
        """
        with self._transaction() as conn:
            return self._append_audit(conn, action, reason, params, at)

    def _append_audit(
        self,
        conn: sqlite3.Connection,
        action: str,
        reason: str,
        params: dict[str, Any],
        at: datetime,
    ) -> int:
        head = conn.execute("SELECT last_hash FROM audit_head WHERE one_row = 1").fetchone()
        if head is None:
            raise StoreError(f"{self.path}: the audit_head row is missing; run `audit verify`")
        prev_hash = str(head[0])
        at_ms = to_ms(at)
        params_json = json.dumps(params, ensure_ascii=False, sort_keys=True)
        cursor = conn.execute(
            "INSERT INTO audit (at_ms, action, reason, params_json, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, '')",
            (at_ms, action, reason, params_json, prev_hash),
        )
        entry_id = int(cursor.lastrowid or 0)
        digest = entry_hash(entry_id, at_ms, action, reason, params_json, prev_hash)
        conn.execute("UPDATE audit SET hash = ? WHERE id = ?", (digest, entry_id))
        conn.execute(
            "UPDATE audit_head SET last_id = ?, last_hash = ?, entries = entries + 1 "
            "WHERE one_row = 1",
            (entry_id, digest),
        )
        return entry_id

    def audit_entries(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` audit rows, newest first."""
        rows = self._query(
            f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?",  # noqa: S608
            (int(limit),),
        )
        return [
            AuditEntry(id, from_ms(at_ms), action, reason, json.loads(params), prev, digest)
            for id, at_ms, action, reason, params, prev, digest in rows
        ]

    def verify_audit(self) -> AuditVerification:
        """Check the whole chain and its head (`hub.audit.verify_chain`).

        Detects an edited entry, a deleted one (a gap in ids or a broken link), one
        moved to another place, and deleted newest entries (through ``audit_head``).
        A chain alone cannot see a truncated tail; the head can. Neither stops someone
        who rewrites every hash: compare `head_hash` with one noted elsewhere.
        """
        with self._lock:
            conn = self._db()
            # One read transaction: the rows and the head come from the same snapshot even
            # while ingest appends, and readers do not block the WAL writer.
            conn.execute("BEGIN")
            try:
                head_row = conn.execute(
                    "SELECT last_id, last_hash, entries FROM audit_head WHERE one_row = 1"
                ).fetchone()
                cursor = conn.execute(
                    f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id"  # noqa: S608
                )
                head = None if head_row is None else AuditHead(*head_row)
                return verify_chain((AuditRow(*row) for row in cursor), head)
            finally:
                conn.execute("COMMIT")

    # -- retention -------------------------------------------------------------------

    def purge_older_than(
        self, cutoff: datetime, *, at: datetime | None = None, reason: str = "retention"
    ) -> dict[str, int]:
        """Delete what is older than `cutoff` (strictly: a row at exactly `cutoff` stays).

        Scans go by ``scanned_at`` and also by ``received_at``, so that no time in
        the file is older than the cutoff (the two differ only for a scan dated up to
        5 minutes ahead of the hub's clock); dead letters and batch ids by
        ``received_at``. One transaction, which also writes a ``purge`` audit entry
        (at `at`, default now) with the cutoff and the counts: a purge without its
        record cannot happen. The audit log itself is kept; see docs/decisions.md.
        """
        cutoff_ms = to_ms(cutoff)
        with self._transaction() as conn:
            counts = {
                "scans": conn.execute(
                    "DELETE FROM scans WHERE scanned_at_ms < ? OR received_at_ms < ?",
                    (cutoff_ms, cutoff_ms),
                ).rowcount,
                "dead_letters": conn.execute(
                    "DELETE FROM dead_letters WHERE received_at_ms < ?", (cutoff_ms,)
                ).rowcount,
                "batches": conn.execute(
                    "DELETE FROM batches WHERE received_at_ms < ?", (cutoff_ms,)
                ).rowcount,
            }
            params: dict[str, Any] = {"cutoff": format_rfc3339(cutoff), "deleted": counts}
            self._append_audit(conn, "purge", reason, params, at or datetime.now(UTC))
        return counts

    def counts(self) -> dict[str, int]:
        with self._lock:
            conn = self._db()

            def one(sql: str) -> int:
                return int(conn.execute(sql).fetchone()[0])

            return {
                "scans": one("SELECT COUNT(*) FROM scans"),
                "people": one("SELECT COUNT(DISTINCT person_key) FROM scans"),
                "venues": one("SELECT COUNT(*) FROM venues"),
                "units": one("SELECT COUNT(*) FROM units"),
                "dead_letters": one("SELECT COUNT(*) FROM dead_letters"),
            }


def _venue(row: Sequence[Any]) -> VenueRecord:
    venue_id, name, address, district = row
    return VenueRecord(venue_id=venue_id, name=name, address=address, district=district)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
