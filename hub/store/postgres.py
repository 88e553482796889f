"""`PostgresStore`: the hub's store on PostgreSQL, for a province's load and many hub workers.

    >>> store = PostgresStore("postgresql://hub@db.example/doorscan", vault=vault)  # doctest: +SKIP

It keeps every promise of `hub.store.base` exactly as `SqliteStore` does; the queries
are the same ones (`hub.store.common_store`). What is PostgreSQL's own:

- Migrations (`hub.store.postgres_schema`) are numbered in ``schema_version`` and run
  on open, each in its own transaction under an advisory lock, so workers starting
  together take turns; a newer database is refused, another vault key too.
- ``scans`` is partitioned by range of ``scanned_at_ms``, one partition per **Vietnam
  day** (UTC+7, no daylight saving; ``scans_YYYYMMDD``): the day the hub's people, its
  reports (`hub.store.common_reports`) and its retention think in, so a day's report
  reads one partition. A partition is made when the first scan of its day arrives, in
  a short transaction of its own under the advisory lock, before the insert's (done
  inside the insert's, its lock on ``scans`` could deadlock with another worker's
  insert); tomorrow's is made a day early when that is quick (`_prepare_tomorrow`).
  Retention drops whole days (`purge_older_than`).
- A partitioned table cannot have ``scan_id`` alone as its key, so the small
  ``scan_ids`` table carries it: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` there
  decides, in one statement per batch, which scans are new, even between workers.
- Traces are Index Only Scans of covering btrees on ``(venue_id, scanned_at_ms,
  scan_id)`` and ``(person_key, scanned_at_ms, scan_id)`` in each day's partition,
  pruned to the days asked, in one ``REPEATABLE READ`` snapshot
  (`hub.store.common_trace`). A plain btree on the integer time serves the trace's
  ``BETWEEN`` as well as a GiST on a ``tstzrange`` would, without the ``btree_gist``
  extension (which needs a superuser to install) and with cheaper inserts.
- One connection per store object behind an `RLock`, autocommit off: every method is
  one explicit transaction, committed or rolled back before the lock is released.
  ``synchronous_commit`` is set on, whatever the server's default: a commit returned
  is on disk, and the hub acks a unit only after it. On a primary whose
  ``synchronous_standby_names`` names a standby, "on disk" means on the standby's
  disk too, so a commit returned survives the primary's server.
- Failover: the URL may name several hosts, libpq's way
  (``postgresql://hub@db1,db2/doorscan?target_session_attrs=read-write``), and a
  connection goes to the one that takes writes. A call whose connection is lost raises
  `StoreUnavailable` (the hub leaves the message unacked and tries again); the next
  call connects anew and so follows a promoted standby, no restart needed.
- Identities at rest: as in SQLite, sealed (``identity``, ``BYTEA``), people filed
  under their pseudonym, names only as a keyed hash; there is no clear column at all.

Retention by ``received_at`` (a scan dated ahead of the hub's clock, kept by SQLite's
rule too) reads a partial index of only such scans, not every day kept.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql

from doorscan.timefmt import to_ms
from hub.store.base import (
    BatchConflict,
    BatchInsert,
    BatchKey,
    Hold,
    InsertResult,
    NewDeadLetter,
    StoredScan,
    StoreError,
    StoreUnavailable,
)
from hub.store.common import (
    DAY_MS,
    SCAN_COLUMNS,
    SqlConnection,
    SqlCursor,
    day_start_ms,
    to_format_params,
)
from hub.store.common_store import NEW, Filed, SqlStore
from hub.store.common_trace import ARRAY_SQL
from hub.store.postgres_schema import (
    AUDIT_INSERT_PG,
    LOCK_SQL,
    SCHEMA_VERSION,
    ensure_partitions,
    migrate,
    partition_day,
    partitions,
)
from hub.vault import Vault

__all__ = ["DELETE_DATED_AHEAD", "SCHEMA_VERSION", "PostgresStore"]

T = TypeVar("T")

_INSERT_SCAN = to_format_params(
    f"INSERT INTO scans ({SCAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
)
DELETE_DATED_AHEAD = (
    "DELETE FROM scans WHERE scanned_at_ms > received_at_ms AND received_at_ms < ? "
    "AND scanned_at_ms >= ? RETURNING scan_id"
)
"""Retention's scans received before the cutoff but dated after it (``scans_dated_ahead``).

Parameters: the cutoff twice."""
_TRY_AHEAD_EVERY_S = 60.0
_TRY_AHEAD_LOCK_TIMEOUT_MS = 200

# In id order: two workers claiming overlapping batches lock the ids in the same order,
# so one waits for the other instead of the two deadlocking.
_CLAIM_IDS = (
    "INSERT INTO scan_ids (scan_id, scanned_at_ms, digest) "
    "SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[]) "
    "AS claim (scan_id, scanned_at_ms, digest) "
    "ORDER BY scan_id ON CONFLICT (scan_id) DO NOTHING RETURNING scan_id"
)
_STORED_DIGESTS = "SELECT scan_id, digest FROM scan_ids WHERE scan_id = ANY(?)"
_INSERT_HELD = to_format_params(
    f"INSERT INTO held_scans ({SCAN_COLUMNS}, held_code, held_reason) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class _Connection:
    """A psycopg connection that speaks the shared SQL (``?`` placeholders)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> SqlCursor:
        return self.raw.execute(to_format_params(sql), parameters)


def _one_line(exc: BaseException) -> str:
    """libpq's multi-line message as one line: logs and the CLI print it as one."""
    return " ".join(str(exc).split())


def _roll_back(raw: psycopg.Connection[Any]) -> None:
    """End a failed transaction, if its connection still can.

    A connection lost meanwhile is left closed for `PostgresStore._db` to replace (the
    server rolls back a transaction whose connection ends), and the caller sees the
    transaction's own error, not the rollback's.
    """
    if raw.closed:
        return
    with suppress(psycopg.OperationalError):
        raw.rollback()


class _ServerConnection(psycopg.Connection[Any]):
    """A psycopg connection that remembers whether the server said goodbye on it.

    A server that stops, restarts, is failed over from or ends the session
    (``pg_terminate_backend``) sends a FATAL message before it closes the socket. Arriving
    while the connection is idle, libpq hands that message to the notice handlers, not
    to a query; the socket's end may come a moment later.
    """

    said_goodbye = False


def _connect(url: str, *setup: str) -> _ServerConnection:
    """A new connection to the hub database, autocommit off, with `setup` run and committed.

    A server that cannot be reached is `StoreUnavailable`: the hub tries again later.
    """
    raw = None
    try:
        raw = _ServerConnection.connect(url, autocommit=False)
        seen = weakref.ref(raw)  # not the connection itself: no cycle through its handlers

        def on_notice(notice: psycopg.errors.Diagnostic) -> None:
            conn = seen()
            if conn is not None and notice.severity_nonlocalized in ("FATAL", "PANIC"):
                conn.said_goodbye = True

        raw.add_notice_handler(on_notice)
        for statement in setup:
            raw.execute(statement)
        raw.commit()
    except psycopg.OperationalError as exc:
        if raw is not None:
            raw.close()
        raise StoreUnavailable(f"cannot connect to the hub database: {_one_line(exc)}") from None
    return raw


def _reusable(raw: _ServerConnection) -> bool:
    """Whether an idle connection can start the next transaction.

    Not if psycopg saw it break, nor if a transaction was left open on it (its rollback
    failed), nor if the server ended the session while it sat idle: reading what has
    arrived (never waiting: libpq's socket does not block) finds the server's goodbye
    (`_ServerConnection`), so the next call starts on a new connection instead of
    failing. A server that vanished without a word (power cut, cable) is found only by
    the next statement: that call fails (`StoreUnavailable`) and the one after it
    reconnects.
    """
    if raw.closed or raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False
    try:
        # Read what has arrived, then have libpq parse it (`is_busy`), which hands a
        # goodbye to the notice handler; a second read meets the end of the stream, if it
        # has come yet (psycopg then marks the connection closed).
        raw.pgconn.consume_input()
        raw.pgconn.is_busy()
        raw.pgconn.consume_input()
    except psycopg.OperationalError:
        return False
    return not raw.closed and not raw.said_goodbye


class PostgresStore(SqlStore):
    """`HubStore` on a PostgreSQL database, in the schema its URL's search_path names.

    `vault` is required: a database written with another vault is refused (`StoreError`).
    """

    _login_lock_sql = (
        "SELECT pg_advisory_xact_lock(hashtext('doorscan-login:' || current_schema()))"
    )
    _trace_sql = ARRAY_SQL  # `hub.store.common_trace`: arrays joined LATERAL, not VALUES lists

    def __init__(self, url: str, *, vault: Vault) -> None:
        self.url = url
        self._vault = vault
        self._lock = threading.RLock()
        self._audit_insert = AUDIT_INSERT_PG
        self._days: set[date] = set()  # partitions known to exist (made or seen)
        self._next_try_ahead = 0.0  # time.monotonic() of the next `_prepare_tomorrow`
        self._where = "PostgreSQL"
        self._closed = False
        self._raw: _ServerConnection | None = None
        self._in_transaction: _ServerConnection | None = None  # while one runs
        # Long reads (a trace) on a connection of their own, so ingest goes on meanwhile.
        self._read_lock = threading.Lock()
        self._reader: _ServerConnection | None = None
        try:
            self._where = self._setup()
            migrate(self._transaction, vault, self._where)
        except BaseException:
            self.close()
            raise

    def _setup(self) -> str:
        with self._transaction() as conn:
            database, schema = conn.execute(
                "SELECT current_database(), current_schema()"
            ).fetchone()
        if schema is None:
            raise StoreError(f"database {database}: no schema of the search_path exists")
        return f"PostgreSQL {database}/{schema}"

    # -- lifecycle and transactions -----------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._raw is not None:
                self._raw.close()
                self._raw = None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _db(self) -> _ServerConnection:
        if self._closed:
            raise StoreError(f"the store {self._where} is closed")
        if self._in_transaction is not None:
            # The running transaction's connection, even one just lost: a new connection
            # here would run the rest of the transaction apart from its start, and leave
            # it open to be committed with the next one.
            return self._in_transaction
        if self._raw is not None and not _reusable(self._raw):
            self._raw.close()
            self._raw = None
        if self._raw is None:
            # First use, or the server went away (a restart, a failover): with several
            # hosts in the URL and ``target_session_attrs=read-write``, libpq tries each
            # and keeps the one that takes writes, so after a promotion this finds the
            # new primary by itself. A commit must be durable before the hub acks, whatever
            # the server's default; with a synchronous standby, durable on the standby too.
            self._raw = _connect(self.url, "SET synchronous_commit = on")
        return self._raw

    @contextmanager
    def _transaction(self) -> Iterator[SqlConnection]:
        # psycopg begins the transaction at the first statement; it ends here, either way.
        with self._lock:
            raw = self._db()
            outer, self._in_transaction = self._in_transaction, raw
            try:
                try:
                    yield _Connection(raw)
                except BaseException:
                    _roll_back(raw)
                    raise
                raw.commit()
            except psycopg.OperationalError as exc:
                if not raw.closed:
                    raise  # the statement's own failure (a lock timeout): the connection is fine
                # The connection was lost (the server died, restarted or was demoted): the
                # server rolls back what it had not committed. Lost during the commit, the
                # transaction may have committed all the same (`StoreUnavailable`).
                raise StoreUnavailable(
                    f"lost the connection to the hub database: {_one_line(exc)}"
                ) from exc
            finally:
                self._in_transaction = outer

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._transaction() as conn:
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def _snapshot(self) -> Iterator[SqlConnection]:
        with self._transaction() as conn:
            # Several reads, one snapshot (READ COMMITTED would take one per statement).
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    @contextmanager
    def _read_apart(self) -> Iterator[SqlConnection]:
        # `_snapshot` on the store's read connection, replaced as `_db` replaces its own.
        with self._read_lock:
            if self._closed:
                raise StoreError(f"the store {self._where} is closed")
            if self._reader is not None and not _reusable(self._reader):
                self._reader.close()
                self._reader = None
            if self._reader is None:
                self._reader = _connect(self.url)
            reader = self._reader
            try:
                reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield _Connection(reader)
            except psycopg.OperationalError as exc:
                _roll_back(reader)
                if not reader.closed:
                    raise
                raise StoreUnavailable(
                    f"lost the connection to the hub database: {_one_line(exc)}"
                ) from exc
            except BaseException:
                _roll_back(reader)
                raise
            else:
                _roll_back(reader)  # read only: nothing to commit

    # -- scans ----------------------------------------------------------------------------

    def insert_scans(
        self,
        scans: Sequence[StoredScan],
        received_at: datetime,
        batch: BatchKey | None = None,
        letters: Sequence[NewDeadLetter] = (),
    ) -> InsertResult:
        """`hub.store.base.ScanSink.insert_scans`, after making the partitions it needs."""
        return self._into_partitions(
            scans,
            received_at,
            lambda: super(PostgresStore, self).insert_scans(scans, received_at, batch, letters),
        )

    def insert_batches(
        self, batches: Sequence[BatchInsert], received_at: datetime
    ) -> list[InsertResult | BatchConflict]:
        """`hub.store.base.ScanSink.insert_batches`, after making the partitions they need."""
        scans = [scan for item in batches for scan in item.scans]
        return self._into_partitions(
            scans,
            received_at,
            lambda: super(PostgresStore, self).insert_batches(batches, received_at),
        )

    def _into_partitions(
        self, scans: Sequence[StoredScan], received_at: datetime, insert: Callable[[], T]
    ) -> T:
        days = {partition_day(to_ms(scan.scanned_at)) for scan in scans if scan.hold is None}
        self._ensure_days(days)
        self._prepare_tomorrow(partition_day(to_ms(received_at)) + timedelta(days=1))
        try:
            return insert()
        except psycopg.errors.CheckViolation:
            # "No partition for the row": another worker's purge dropped a day this
            # store had seen. Nothing was stored; make the day again and retry once.
            with self._lock:
                self._days.clear()
            if not self._ensure_days(days):
                raise
            return insert()

    def _ensure_days(self, days: set[date]) -> bool:
        """Make the partitions of `days` this store has not seen; True if one was missing."""
        with self._lock:  # `_days` is shared by the store's threads
            missing = days - self._days
            if not missing:
                return False
            with self._transaction() as conn:
                conn.execute(LOCK_SQL)
                before = set(partitions(conn))
                ensure_partitions(conn, missing - before)
            self._days |= missing
            return bool(missing - before)

    def _prepare_tomorrow(self, day: date) -> None:
        """Make the next day's partition before its first scan, if that can be done quickly.

        Hazard: creating a partition takes an ACCESS EXCLUSIVE lock on ``scans``, so it
        waits for every running read of it (a long report) while every insert queues
        behind it. A day early it is tried under a short ``lock_timeout`` and given up
        (tried again a minute later) rather than stall ingest; only if every try failed
        does the day's first scan make it, and wait.
        """
        with self._lock:
            now = time.monotonic()
            if day in self._days or now < self._next_try_ahead:
                return
            self._next_try_ahead = now + _TRY_AHEAD_EVERY_S
            try:
                with self._transaction() as conn:
                    conn.execute(f"SET LOCAL lock_timeout = '{_TRY_AHEAD_LOCK_TIMEOUT_MS}ms'")
                    conn.execute(LOCK_SQL)
                    ensure_partitions(conn, {day} - set(partitions(conn)))
            except psycopg.errors.LockNotAvailable:
                return
            self._days.add(day)

    def _file_scans(
        self,
        conn: SqlConnection,
        rows: list[tuple[Any, ...]],
        digests: list[str | None],
        holds: list[Hold | None],
    ) -> list[Filed]:
        # One statement claims every id, held or not; the rows whose id it returned are
        # new. A scan id twice in one batch is claimed once: its first row is new.
        claimed = {
            scan_id
            for (scan_id,) in conn.execute(
                _CLAIM_IDS, ([row[0] for row in rows], [row[3] for row in rows], digests)
            ).fetchall()
        }
        fresh = []
        for row in rows:
            fresh.append(row[0] in claimed)
            claimed.discard(row[0])
        others = [row[0] for row, is_new in zip(rows, fresh, strict=True) if not is_new]
        stored = dict(conn.execute(_STORED_DIGESTS, (others,)).fetchall()) if others else {}
        new_rows = [
            row for row, is_new, hold in zip(rows, fresh, holds, strict=True) if is_new and not hold
        ]
        held_rows = [
            (*row, hold.code, hold.reason)
            for row, is_new, hold in zip(rows, fresh, holds, strict=True)
            if is_new and hold
        ]
        with self._db().cursor() as cursor:
            if new_rows:
                cursor.executemany(_INSERT_SCAN, new_rows)
            if held_rows:
                cursor.executemany(_INSERT_HELD, held_rows)
        return [
            NEW if is_new else stored.get(row[0]) for row, is_new in zip(rows, fresh, strict=True)
        ]

    def _refile_released(self, conn: SqlConnection, rows: list[tuple[Any, ...]]) -> None:
        # The digest stays in scan_ids; the row goes back as it was (the last column
        # RETURNING gave is the NULL `_held_digest_column`).
        with self._db().cursor() as cursor:
            cursor.executemany(_INSERT_SCAN, [row[:-1] for row in rows])

    def release_held(self, scan_ids: Sequence[str]) -> list[str]:
        """`SqlStore.release_held`, after making the day partitions the scans go to."""
        ids = sorted(set(scan_ids))
        if ids:
            rows = self._query(
                "SELECT scanned_at_ms FROM held_scans WHERE scan_id = ANY(?)", (ids,)
            )
            self._ensure_days({partition_day(int(ms)) for (ms,) in rows})
        return super().release_held(ids)

    def _purge_scans(self, conn: SqlConnection, cutoff_ms: int) -> int:
        # Under the DDL lock: no worker makes a partition while days are dropped.
        conn.execute(LOCK_SQL)
        deleted = 0
        for day, name in sorted(partitions(conn).items()):
            if day_start_ms(day) + DAY_MS > cutoff_ms:  # the day has rows at the cutoff
                continue
            table = pgsql.Identifier(name)
            count = self._db().execute(pgsql.SQL("SELECT COUNT(*) FROM {}").format(table))
            deleted += int(count.fetchall()[0][0])
            self._db().execute(pgsql.SQL("DROP TABLE {}").format(table))
            self._days.discard(day)
        # The day straddling the cutoff (pruned to its partition), then the scans dated
        # ahead of their reception (found through the small partial index).
        straddling = conn.execute("DELETE FROM scans WHERE scanned_at_ms < ?", (cutoff_ms,))
        conn.execute("DELETE FROM scan_ids WHERE scanned_at_ms < ?", (cutoff_ms,))
        ahead = conn.execute(DELETE_DATED_AHEAD, (cutoff_ms, cutoff_ms)).fetchall()
        if ahead:
            conn.execute("DELETE FROM scan_ids WHERE scan_id = ANY(?)", ([i for (i,) in ahead],))
        return deleted + straddling.rowcount + len(ahead)
