"""`SqliteStore`: the hub's store on one SQLite file (WAL, synchronous=FULL).

The promises of the interface are in `hub.store.base`, and the queries, shared with
`PostgresStore`, in `hub.store.common_store`; what is SQLite's own (the DDL, the
PRAGMAs, one connection behind a lock, how scans are filed and purged) lives here.

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

import hmac
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hub.store.base import Hold, StoreError
from hub.store.common import SCAN_COLUMNS, SqlConnection
from hub.store.common_store import NEW, Filed, SqlStore
from hub.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, VAULT_SCHEMA
from hub.vault import Vault

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

# The clear columns of schema 1 are written empty: the identity lives only in the
# sealed blob (`hub.store.common.scan_row`). A scan id is taken once across ``scans``
# and ``held_scans``: `_file_scans` looks in both (`_STORED_DIGESTS`) before inserting.
# A released held row goes back into ``scans`` with `_INSERT_SCAN` too.
_INSERT_SCAN = (
    f"INSERT INTO scans ({SCAN_COLUMNS}, content_digest, id_number, name) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', '')"
)
_INSERT_HELD = (
    f"INSERT INTO held_scans ({SCAN_COLUMNS}, content_digest, held_code, held_reason) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_STORED_DIGESTS = (
    "SELECT scan_id, content_digest FROM scans WHERE scan_id IN ({marks}) "
    "UNION ALL SELECT scan_id, content_digest FROM held_scans WHERE scan_id IN ({marks})"
)
_IDS_PER_QUERY = 500  # twice that many parameters, far below SQLite's limit (32 766)


class SqliteStore(SqlStore):
    """`Store` on one SQLite file (or ``":memory:"`` for tests).

    `vault` is required and has no default: a default key would be a key everybody
    has. A file written with another vault is refused (`StoreError`).
    """

    MIGRATIONS = MIGRATIONS

    def __init__(self, path: str | Path, *, vault: Vault, busy_timeout_ms: int = 10_000) -> None:
        self.path = str(path)
        self._where = self.path
        self._vault = vault
        self._lock = threading.RLock()
        self._busy_timeout_ms = int(busy_timeout_ms)
        # Long reads (a trace) run on a connection of their own, so they do not hold the
        # one ingest writes on: WAL lets a reader and the writer go on together.
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
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
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

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

    @contextmanager
    def _snapshot(self) -> Iterator[SqlConnection]:
        # A read transaction: its reads see one state, and readers do not block the WAL writer.
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def _read_apart(self) -> Iterator[SqlConnection]:
        # A snapshot as `_snapshot`'s, on the store's read connection (an in-memory
        # database has only the one connection).
        if self.path == ":memory:":
            with self._snapshot() as conn:
                yield conn
            return
        with self._read_lock:
            self._db()  # refused once the store is closed
            if self._reader is None:
                reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                reader.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                reader.execute("PRAGMA query_only = ON")
                self._reader = reader
            self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    # -- how scans are filed and purged -----------------------------------------------------

    _held_digest_column = "content_digest"

    def _file_scans(
        self,
        conn: SqlConnection,
        rows: list[tuple[Any, ...]],
        digests: list[str | None],
        holds: list[Hold | None],
    ) -> list[Filed]:
        # Which ids are taken is read first, then the new rows go in with executemany:
        # one statement per batch instead of one per scan. Nobody can take an id in
        # between: this runs inside BEGIN IMMEDIATE, which holds the file's write lock.
        ids = [row[0] for row in rows]
        taken: dict[str, str | None] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            taken.update(conn.execute(_STORED_DIGESTS.format(marks=marks), chunk * 2).fetchall())
        filed: list[Filed] = []
        fresh, held = [], []
        for row, digest, hold in zip(rows, digests, holds, strict=True):
            scan_id = row[0]
            if scan_id in taken:
                filed.append(taken[scan_id])
                continue
            # An id twice in one call: its first row is new, the next ones compare with it.
            taken[scan_id] = digest
            filed.append(NEW)
            if hold is None:
                fresh.append((*row, digest))
            else:
                held.append((*row, digest, hold.code, hold.reason))
        db = self._db()  # the transaction's connection; SqlConnection has no executemany
        if fresh:
            db.executemany(_INSERT_SCAN, fresh)
        if held:
            db.executemany(_INSERT_HELD, held)
        return filed

    def _refile_released(self, conn: SqlConnection, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            conn.execute(_INSERT_SCAN, row)

    def _purge_scans(self, conn: SqlConnection, cutoff_ms: int) -> int:
        return conn.execute(
            "DELETE FROM scans WHERE scanned_at_ms < ? OR received_at_ms < ?",
            (cutoff_ms, cutoff_ms),
        ).rowcount


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
