"""`SqliteStore`: the hub's store on one SQLite file (WAL, synchronous=FULL).

The promises of the interface are in `hub.store.base`; what is SQLite's own (the DDL,
the PRAGMAs, the ``?`` placeholders, one connection behind a lock) lives here, so a
PostgreSQL backend can sit next to this file without touching its callers.

Identities at rest (schema 5, `hub.vault`): a scan row keeps its person key only as
the vault's pseudonym (indexed, so traces stay range scans) and the identity as one
sealed JSON blob bound to the row's scan id; the old clear columns (``id_number``,
``name``, ``birth_date``, ``sex``, ``address``) stay in the table, empty, because
SQLite cannot drop a column cheaply. Dead letters keep their payload and reason
sealed, bound to the row's id. ``secure_delete`` is on, so deleted rows are zeroed
rather than left in free pages; the migration that seals an older file's clear rows
also vacuums it and empties the WAL, so no clear copy survives in the files.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from doorscan.lifecycle import Closeable
from doorscan.timefmt import format_rfc3339, from_ms, to_ms
from doorscan.wire import UnitRecord, VenueRecord
from hub.audit import AuditHead, AuditRow, AuditVerification, verify_chain
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
from hub.store.sqlite_reports import SqliteReports
from hub.store.sqlite_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    VAULT_SCHEMA,
    append_audit,
    dead_letter_aad,
    name_key,
    scan_aad,
    seal_dead_letter,
    seal_identity,
)
from hub.store.sqlite_users import SqliteUsers
from hub.vault import SealedDataError, Vault

__all__ = ["SCHEMA_VERSION", "SqliteStore"]


_CHECKIN_COLUMNS = "scan_id, venue_id, scanned_at_ms, identity"
_AUDIT_COLUMNS = "id, at_ms, action, reason, params_json, prev_hash, hash"


class SqliteStore(SqliteReports, SqliteUsers, Closeable):
    """`Store` on one SQLite file (or ``":memory:"`` for tests).

    `vault` is required and has no default: a default key would be a key everybody
    has. A file written with another vault is refused (`StoreError`).
    """

    MIGRATIONS = MIGRATIONS

    def __init__(self, path: str | Path, *, vault: Vault, busy_timeout_ms: int = 10_000) -> None:
        self.path = str(path)
        self._vault = vault
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
        # Deleted and overwritten rows are zeroed, not left readable in free space.
        conn.execute("PRAGMA secure_delete = ON")
        sealed_clear_file = False
        for number in range(1, len(self.MIGRATIONS) + 1):
            with self._transaction():
                # Read inside the write lock: another process may be migrating the same file.
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version > len(self.MIGRATIONS):
                    raise StoreError(
                        f"{self.path} has hub schema {version}; this doorscan knows up to "
                        f"{len(self.MIGRATIONS)} (was it written by a newer doorscan?)"
                    )
                if version >= VAULT_SCHEMA:
                    self._check_vault(conn)
                if version >= number:
                    continue
                for step in self.MIGRATIONS[number - 1]:
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        step(conn, self._vault)
                conn.execute(f"PRAGMA user_version = {number}")
                sealed_clear_file = sealed_clear_file or (number == VAULT_SCHEMA and version > 0)
        if sealed_clear_file:
            # The clear rows just sealed may survive in pages SQLite has not reused and
            # in the WAL's older frames: rebuild the file and empty the WAL. Once per file.
            with self._lock:
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _check_vault(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT check_value FROM vault_check WHERE one_row = 1").fetchone()
        if row is None:
            raise StoreError(f"{self.path}: the vault_check row is missing")
        if not hmac.compare_digest(str(row[0]), self._vault.check_value()):
            raise StoreError(
                f"{self.path}: this hub database was written with another vault key "
                "(give the key it was created with: --vault-key or DOORSCAN_HUB_VAULT_KEY)"
            )

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
                identity = {
                    "person_key": who.person_key,
                    "kind": who.kind,
                    "id_number": who.id_number,
                    "name": who.name,
                    "birth_date": who.birth_date,
                    "sex": who.sex,
                    "address": who.address,
                }
                # The clear columns of schema 1 are written empty: the identity lives
                # only in the sealed blob, the person only as its pseudonym, the name
                # only as its keyed folded hash for search (`name_key`).
                cursor = conn.execute(
                    "INSERT INTO scans (scan_id, unit_id, venue_id, scanned_at_ms, clock_trusted, "
                    "person_key, kind, id_number, name, identity, source, received_at_ms, "
                    "name_key) VALUES (?, ?, ?, ?, ?, ?, ?, '', '', ?, ?, ?, ?) "
                    "ON CONFLICT (scan_id) DO NOTHING",
                    (
                        scan.scan_id,
                        scan.unit_id,
                        scan.venue_id,
                        to_ms(scan.scanned_at),
                        scan.clock_trusted,
                        self._vault.blind(who.person_key),
                        who.kind,
                        seal_identity(self._vault, scan.scan_id, identity),
                        scan.source,
                        received_ms,
                        name_key(self._vault, who.name),
                    ),
                )
                (new if cursor.rowcount == 1 else duplicate).append(scan.scan_id)
        return InsertResult(new, duplicate, replayed)

    def add_dead_letter(
        self, source: str, topic: str, payload: bytes, code: str, reason: str, received_at: datetime
    ) -> None:
        """Keep a refused message; its payload and reason are sealed, bound to the row's id."""
        with self._transaction() as conn:
            # The row's id is known only after the insert, and the seal is bound to it.
            cursor = conn.execute(
                "INSERT INTO dead_letters (received_at_ms, source, topic, payload, code, reason) "
                "VALUES (?, ?, ?, x'', ?, '')",
                (to_ms(received_at), source, topic, code),
            )
            letter_id = int(cursor.lastrowid or 0)
            conn.execute(
                "UPDATE dead_letters SET payload = ? WHERE id = ?",
                (seal_dead_letter(self._vault, letter_id, bytes(payload), reason), letter_id),
            )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest `limit` dead letters, newest first, opened."""
        rows = self._query(
            "SELECT id, received_at_ms, source, topic, code, payload FROM dead_letters "
            "ORDER BY id DESC LIMIT ?",
            (int(limit),),
        )
        letters = []
        for letter_id, at_ms, source, topic, code, sealed in rows:
            envelope = json.loads(self._open(sealed, dead_letter_aad(letter_id), "dead letter"))
            payload = base64.b64decode(envelope["payload"])
            letters.append(
                DeadLetter(
                    letter_id, from_ms(at_ms), source, topic, code, envelope["reason"], payload
                )
            )
        return letters

    def _open(self, sealed: bytes | None, aad: bytes, what: str) -> bytes:
        if sealed is None:
            raise StoreError(f"{self.path}: a {what} has no sealed identity (a clear row?)")
        try:
            return self._vault.open(sealed, aad)
        except SealedDataError as exc:
            raise StoreError(
                f"{self.path}: {what} {aad.decode('utf-8', 'replace')}: {exc}"
            ) from None

    def _checkin(self, row: Sequence[Any]) -> Checkin:
        scan_id, venue_id, at_ms, sealed = row
        who = json.loads(self._open(sealed, scan_aad(scan_id), "scan"))
        return Checkin(
            scan_id, who["person_key"], venue_id, at_ms, who["kind"], who["id_number"], who["name"]
        )

    # -- reads for trace and visitor lists ----------------------------------------------

    def pseudonym(self, person_key: str) -> str:
        """The name the store files a person under (`Vault.blind`); the audit log uses it."""
        return self._vault.blind(person_key)

    def checkins_of(self, person_key: str, since_ms: int, until_ms: int) -> list[Checkin]:
        """The person's check-ins with since <= time <= until, oldest first."""
        rows = self._query(
            f"SELECT {_CHECKIN_COLUMNS} FROM scans WHERE person_key = ? "  # noqa: S608
            "AND scanned_at_ms BETWEEN ? AND ? ORDER BY scanned_at_ms, scan_id",
            (self._vault.blind(person_key), since_ms, until_ms),
        )
        return [self._checkin(row) for row in rows]

    def checkins_at(self, venue_id: str, start_ms: int, end_ms: int) -> list[Checkin]:
        """The venue's check-ins with start <= time <= end, oldest first."""
        rows = self._query(
            f"SELECT {_CHECKIN_COLUMNS} FROM scans WHERE venue_id = ? "  # noqa: S608
            "AND scanned_at_ms BETWEEN ? AND ? ORDER BY scanned_at_ms, scan_id",
            (venue_id, start_ms, end_ms),
        )
        return [self._checkin(row) for row in rows]

    def person(self, person_key: str) -> tuple[str, str] | None:
        """(id_number, name) from the person's latest scan, or None if never seen."""
        rows = self._query(
            f"SELECT {_CHECKIN_COLUMNS} FROM scans WHERE person_key = ? "  # noqa: S608
            "ORDER BY scanned_at_ms DESC, scan_id DESC LIMIT 1",
            (self._vault.blind(person_key),),
        )
        if not rows:
            return None
        latest = self._checkin(rows[0])
        return latest.id_number, latest.name

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
        try:
            return append_audit(conn, action, reason, params, at)
        except StoreError as exc:
            raise StoreError(f"{self.path}: {exc}") from None

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
