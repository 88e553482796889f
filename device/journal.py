"""The unit's scan journal: every accepted scan, on disk before the door shows green.

The journal is the unit's outbox and its only copy of a scan until the hub has
committed it. It is SQLite, because a scan must survive a power cut at any instant
and the journal must stay fast with days of backlog (TinyDB's JSON storage rewrote
17 MiB per insert at 50 000 records and was left as corrupt JSON by `kill -9`).

    >>> with ScanJournal(tmp_path / "journal.db") as journal:      # doctest: +SKIP
    ...     journal.record(scan)                  # committed and fsynced when it returns
    ...     batch = journal.pending(100)          # oldest unacknowledged first
    ...     journal.settle([s.scan_id for s in batch], at=clock.now())

What is promised:

- `record()` returns only after the row is committed with ``journal_mode=WAL`` and
  ``synchronous=FULL``: the WAL is fsynced on every commit, so a committed scan
  survives a crash of the process (tested with SIGKILL) and, as far as the SD card
  honours fsync, a power cut (not testable without pulling a plug).
- A scan is never silently replaced: recording a known `scan_id` raises
  `DuplicateScanError`. Every SQLite fault (disk full, I/O error, a corrupt file)
  comes out as `JournalError` and the journal stays usable for the next call.
- Settled scans stay until `purge_settled()`; the newest row is always kept so
  `last_scan_at()` survives a quiet day.
- A scan the hub refused for good is quarantined (`quarantine()`), never deleted: it
  leaves the queue, keeps the hub's code and reason, is counted in the unit's status,
  and goes back in the queue only when someone says so (`release_quarantined()`).

Not promised: surviving a card that lies about fsync, or a file corrupted by
something else. Such a file raises `JournalError` on open and is left as it is for
a technician; it is never replaced by an empty journal, because it may hold the
only copy of scans.

Threads: one connection (``check_same_thread=False``) behind one lock. The scanner
thread records and the sync thread reads and settles; both write, and two
connections would meet on SQLite's single writer lock and need busy retries on the
hot path. Every call here is short (a commit, or a read of at most
``limit + len(skip)`` rows by index), so a queue on a Python lock costs less than
that and can never fail with SQLITE_BUSY between our own threads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from doorscan.atomicfile import fsync_dir
from doorscan.errors import DoorscanError
from doorscan.lifecycle import Closeable
from doorscan.timefmt import from_ms, to_ms
from doorscan.wire import Scan

__all__ = [
    "JOURNAL_SCHEMA_VERSION",
    "JournalError",
    "DuplicateScanError",
    "QuarantinedScan",
    "ScanJournal",
]

log = logging.getLogger(__name__)

JOURNAL_SCHEMA_VERSION = 4

# `seq` (the rowid) is the recording order; it never goes back because SQLite hands out
# max(rowid) + 1 and purge never deletes the newest row. The two partial indexes keep
# `pending()`/`backlog()` proportional to the backlog and `purge_settled()` to what
# it deletes, however many settled rows are kept.
_SCHEMA_V1 = (
    """
    CREATE TABLE scans (
        seq INTEGER PRIMARY KEY,
        scan_id TEXT NOT NULL UNIQUE,
        venue_id TEXT NOT NULL,
        scanned_at_ms INTEGER NOT NULL,
        clock_trusted INTEGER NOT NULL CHECK (clock_trusted IN (0, 1)),
        qr_text TEXT NOT NULL,
        acked_at_ms INTEGER
    )
    """,
    "CREATE INDEX scans_pending ON scans (seq) WHERE acked_at_ms IS NULL",
    "CREATE INDEX scans_settled ON scans (acked_at_ms) WHERE acked_at_ms IS NOT NULL",
)
# 2: what the hub needs to correct the time of a scan taken with an untrusted clock.
_SCHEMA_V2 = (
    "ALTER TABLE scans ADD COLUMN boot_id TEXT",
    "ALTER TABLE scans ADD COLUMN mono_ms INTEGER",
)
# 3: a sealed scan keeps only the sealed text and the identity kind; its
# qr_text is '' (SQLite cannot drop the NOT NULL of v1 without copying the table).
_SCHEMA_V3 = (
    "ALTER TABLE scans ADD COLUMN sealed TEXT",
    "ALTER TABLE scans ADD COLUMN kind TEXT",
)
# 4: scans the hub refused for good are quarantined, not deleted: kept with the hub's
# code and reason, out of the queue (the pending index leaves them out), counted.
_SCHEMA_V4 = (
    "ALTER TABLE scans ADD COLUMN refused_code TEXT",
    "ALTER TABLE scans ADD COLUMN refused_reason TEXT",
    "ALTER TABLE scans ADD COLUMN refused_at_ms INTEGER",
    "DROP INDEX scans_pending",
    "CREATE INDEX scans_pending ON scans (seq) WHERE acked_at_ms IS NULL AND refused_code IS NULL",
    "CREATE INDEX scans_quarantined ON scans (seq) WHERE refused_code IS NOT NULL",
)
_MIGRATIONS = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4)
_PENDING = "acked_at_ms IS NULL AND refused_code IS NULL"
_PENDING_SQL = (
    "SELECT scan_id, venue_id, scanned_at_ms, clock_trusted, qr_text, boot_id, mono_ms, "  # noqa: S608
    f"sealed, kind FROM scans WHERE {_PENDING} ORDER BY seq LIMIT ?"
)
_BACKLOG_SQL = f"SELECT count(*) FROM scans WHERE {_PENDING}"  # noqa: S608
_QUARANTINE_SQL = (
    "UPDATE scans SET refused_code = ?, refused_reason = ?, refused_at_ms = ? "  # noqa: S608
    f"WHERE scan_id = ? AND {_PENDING}"
)


@dataclass(frozen=True)
class QuarantinedScan:
    """A scan the hub refused for good, as the unit keeps it (no identity: that stays sealed)."""

    scan_id: str
    scanned_at: datetime
    code: str
    reason: str
    refused_at: datetime


class JournalError(DoorscanError, OSError):
    """The journal could not do what was asked (disk full, I/O error, closed, bad file)."""


class DuplicateScanError(JournalError):
    """A scan with this scan_id is already in the journal; the journal kept the first."""


class ScanJournal(Closeable):
    """The durable list of scans this unit has made, and which of them the hub has."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        is_new = not self.path.exists()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the scan journal {self.path}: {exc}") from exc
        try:
            self._default_max_pages = self._setup(self._conn)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        if is_new:
            # SQLite syncs the directory when it creates a WAL, not the main file:
            # without this a power cut could forget that the journal file exists.
            fsync_dir(self.path.parent)

    def _setup(self, conn: sqlite3.Connection) -> int:
        try:
            # 1 KiB pages (set before the file has any, ignored after): a scan row is a few
            # hundred bytes, and each commit rewrites one page per B-tree it touches (the
            # table and two indexes). With 4 KiB pages that was ~17 KiB written per scan on
            # the SD card; with 1 KiB, ~8 KiB (make bench, docs/benchmarks.md).
            conn.execute("PRAGMA page_size=1024")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(
                    f"{self.path}: SQLite refused WAL mode ({mode}); is it on a network drive?"
                )
            conn.execute("PRAGMA synchronous=FULL")
            # Another process (a technician's sqlite3 shell) may hold a lock for a moment.
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version < JOURNAL_SCHEMA_VERSION:
                    for migration in _MIGRATIONS[version:]:
                        for statement in migration:
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={JOURNAL_SCHEMA_VERSION}")
                elif version != JOURNAL_SCHEMA_VERSION:
                    raise JournalError(
                        f"{self.path} has journal schema {version}; this software reads "
                        f"schema {JOURNAL_SCHEMA_VERSION} (was it written by a newer doorscan?)"
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return int(conn.execute("PRAGMA max_page_count").fetchone()[0])
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the scan journal {self.path}: {exc}") from exc

    # -- the scanner's side ------------------------------------------------------

    def record(self, scan: Scan) -> None:
        """Commit one scan; when this returns it is on disk (fsynced), never before.

        Raises `DuplicateScanError` if the scan_id is already recorded, `JournalError`
        for any storage fault, and `ValueError` if `scanned_at` has sub-millisecond
        digits (the journal and the wire keep milliseconds; truncate before recording).
        """
        if scan.scanned_at.microsecond % 1000:
            raise ValueError(
                f"scan {scan.scan_id}: scanned_at {scan.scanned_at.isoformat()} is finer than "
                "a millisecond; the journal would not give back the same scan"
            )
        row = (
            scan.scan_id,
            scan.venue_id,
            to_ms(scan.scanned_at),
            int(scan.clock_trusted),
            scan.qr_text or "",
            scan.boot_id,
            scan.mono_ms,
            scan.sealed,
            scan.kind,
        )
        with self._lock:
            conn = self._open_conn()
            try:
                # Autocommit: the single INSERT is its own transaction, committed (and the
                # WAL fsynced, synchronous=FULL) before execute() returns.
                conn.execute(
                    "INSERT INTO scans (scan_id, venue_id, scanned_at_ms, clock_trusted, qr_text,"
                    " boot_id, mono_ms, sealed, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
            except sqlite3.IntegrityError as exc:
                self._rollback(conn)
                if "scan_id" in str(exc):
                    raise DuplicateScanError(
                        f"scan {scan.scan_id} is already in the journal; not recorded again"
                    ) from exc
                raise JournalError(f"scan {scan.scan_id} NOT recorded: {_describe(exc)}") from exc
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise JournalError(f"scan {scan.scan_id} NOT recorded: {_describe(exc)}") from exc

    # -- the sync's side ----------------------------------------------------------

    def pending(self, limit: int, skip: Collection[str] = ()) -> list[Scan]:
        """Up to `limit` scans the hub has not acknowledged, oldest recorded first.

        Scans whose id is in `skip` (the batches already in flight) are left out. The
        read walks the pending index and stops after ``limit + len(skip)`` rows, so
        its cost does not grow with the backlog.
        """
        if limit <= 0:
            return []
        skip_ids = skip if isinstance(skip, set | frozenset) else frozenset(skip)
        with self._lock:
            conn = self._open_conn()
            try:
                rows = conn.execute(_PENDING_SQL, (limit + len(skip_ids),)).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read pending scans: {_describe(exc)}") from exc
        scans = []
        for row in rows:
            scan_id, venue_id, scanned_at_ms, clock_trusted, qr_text, boot_id, mono_ms = row[:7]
            sealed, kind = row[7:]
            if scan_id in skip_ids:
                continue
            scans.append(
                Scan(
                    scan_id=scan_id,
                    venue_id=venue_id,
                    scanned_at=from_ms(scanned_at_ms),
                    clock_trusted=bool(clock_trusted),
                    qr_text=None if sealed is not None else qr_text,
                    sealed=sealed,
                    kind=kind,
                    boot_id=boot_id,
                    mono_ms=mono_ms,
                )
            )
            if len(scans) == limit:
                break
        return scans

    def settle(self, scan_ids: Iterable[str], at: datetime) -> int:
        """Mark scans as committed by the hub; return how many were pending until now.

        Unknown and already settled ids are ignored (an ack may come twice), so the
        first settle time of a scan is the one kept.
        """
        at_ms = to_ms(at)
        params = [(at_ms, scan_id) for scan_id in dict.fromkeys(scan_ids)]
        if not params:
            return 0
        return self._write_many(
            f"settle {len(params)} scans",
            "UPDATE scans SET acked_at_ms = ? WHERE scan_id = ? AND acked_at_ms IS NULL",
            params,
        )

    def quarantine(self, refusals: Iterable[tuple[str, str, str]], at: datetime) -> int:
        """Take scans the hub refused for good out of the queue: (scan_id, code, reason).

        They stay in the journal with the hub's code and reason, are never sent again
        and never purged; `release_quarantined` puts them back in the queue (after the
        hub was fixed, say). Returns how many pending scans were quarantined now.
        """
        at_ms = to_ms(at)
        params = [
            (code[:40], reason[:300], at_ms, scan_id)
            for scan_id, code, reason in {r[0]: r for r in refusals}.values()
        ]
        if not params:
            return 0
        return self._write_many(f"quarantine {len(params)} scans", _QUARANTINE_SQL, params)

    def quarantined(self, limit: int = 100) -> list[QuarantinedScan]:
        """The oldest `limit` quarantined scans, with the hub's code and reason."""
        with self._lock:
            conn = self._open_conn()
            try:
                rows = conn.execute(
                    "SELECT scan_id, scanned_at_ms, refused_code, refused_reason, refused_at_ms "
                    "FROM scans WHERE refused_code IS NOT NULL ORDER BY seq LIMIT ?",
                    (int(limit),),
                ).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read quarantined scans: {_describe(exc)}") from exc
        return [
            QuarantinedScan(scan_id, from_ms(at_ms), code, reason or "", from_ms(refused_ms or 0))
            for scan_id, at_ms, code, reason, refused_ms in rows
        ]

    def quarantine_count(self) -> int:
        """How many scans are quarantined (`UnitStatus.quarantined`)."""
        return self._query_int("SELECT count(*) FROM scans WHERE refused_code IS NOT NULL") or 0

    def release_quarantined(self, code: str | None = None) -> int:
        """Put quarantined scans (of one refusal code, or all) back in the queue."""
        return self._write(
            "release quarantined scans",
            "UPDATE scans SET refused_code = NULL, refused_reason = NULL, refused_at_ms = NULL "
            "WHERE refused_code IS NOT NULL AND (? IS NULL OR refused_code = ?)",
            (code, code),
        )

    def purge_settled(self, before: datetime) -> int:
        """Delete settled scans made and settled before `before`; return how many.

        Both times must be older: with an untrusted clock a scan may carry a time
        from years ago, and it must still be kept a full day after its ack. The
        newest row is never deleted (it is where `last_scan_at()` comes from).
        """
        before_ms = to_ms(before)
        return self._write(
            "purge settled scans",
            "DELETE FROM scans WHERE acked_at_ms IS NOT NULL AND acked_at_ms < ? "
            "AND scanned_at_ms < ? AND seq < (SELECT max(seq) FROM scans)",
            (before_ms, before_ms),
        )

    # -- status -------------------------------------------------------------------

    def backlog(self) -> int:
        """How many scans the hub has not acknowledged yet."""
        return self._query_int(_BACKLOG_SQL) or 0

    def last_scan_at(self) -> datetime | None:
        """`scanned_at` of the most recently recorded scan, or None for an empty journal."""
        ms = self._query_int("SELECT scanned_at_ms FROM scans ORDER BY seq DESC LIMIT 1")
        return None if ms is None else from_ms(ms)

    def integrity_ok(self) -> bool:
        """Run SQLite's full integrity check (reads the whole file: not for the hot path)."""
        with self._lock:
            conn = self._open_conn()
            try:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
            except sqlite3.DatabaseError as exc:
                log.error("integrity check of %s failed: %s", self.path, exc)
                return False
        if rows != [("ok",)]:
            log.error("integrity check of %s: %s", self.path, rows[:5])
            return False
        return True

    def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap how large the journal file may grow (None lifts the cap).

        A guard so that a huge backlog cannot fill the SD card that the OS needs
        too; past the cap `record()` raises `JournalError` just as on a full disk,
        which is also how the tests provoke SQLITE_FULL. The cap is never below the
        file's current size (SQLite's rule) and lasts until `close()`.
        """
        with self._lock:
            conn = self._open_conn()
            try:
                if max_bytes is None:
                    pages = self._default_max_pages
                else:
                    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                    pages = max(1, max_bytes // page_size)
                conn.execute(f"PRAGMA max_page_count={int(pages)}")
            except sqlite3.Error as exc:
                raise JournalError(f"cannot cap the journal size: {_describe(exc)}") from exc

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL into the file); idempotent."""
        with self._lock:
            if self._conn is None:
                return
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except sqlite3.Error as exc:
                # Committed scans are in the WAL already; SQLite replays it on next open.
                log.warning("closing the scan journal %s: %s", self.path, exc)

    # -- helpers ------------------------------------------------------------------

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"the scan journal {self.path} is closed")
        return self._conn

    def _write(self, what: str, sql: str, params: tuple[object, ...]) -> int:
        """One autocommitted statement; the rows it changed. Faults: `JournalError`."""
        with self._lock:
            conn = self._open_conn()
            try:
                return conn.execute(sql, params).rowcount
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise JournalError(f"cannot {what}: {_describe(exc)}") from exc

    def _write_many(self, what: str, sql: str, params: Sequence[tuple[object, ...]]) -> int:
        """One statement for each of `params`, in one transaction; the rows changed."""
        with self._lock:
            conn = self._open_conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                changed = conn.executemany(sql, params).rowcount
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise JournalError(f"cannot {what}: {_describe(exc)}") from exc
        return changed

    def _query_int(self, sql: str) -> int | None:
        with self._lock:
            conn = self._open_conn()
            try:
                row = conn.execute(sql).fetchone()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read the scan journal: {_describe(exc)}") from exc
        return None if row is None or row[0] is None else int(row[0])

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # After SQLITE_FULL or an I/O error SQLite may already have rolled back; a
        # dangling transaction would make every later call fail, so end it if it is there.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("rollback after a journal error failed: %s", exc)


def _describe(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)
