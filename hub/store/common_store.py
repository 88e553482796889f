"""`SqlStore`: the body of a hub store that both backends share (`hub.store.base.HubStore`).

Everything here is plain SQL with ``?`` placeholders (`hub.store.common`). A backend
subclass gives the connection handling and the few things that differ:

- `_transaction()` (a write transaction, under the store's lock), `_query()` (one
  read), `_snapshot()` (several reads that see one state of the database);
- `_file_scans()`: put new scans in ``scans`` (held ones in ``held_scans``) and say
  which were new, or what digest the stored one has;
- `_refile_released()`: put scans an admin released from ``held_scans`` in ``scans``;
- `_purge_scans()`: forget scans older than a cutoff, say how many;
- `_where`: how error messages name the database.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from doorscan.lifecycle import Closeable
from doorscan.timefmt import format_rfc3339, from_ms, to_ms
from doorscan.wire import UnitRecord, VenueRecord, topic_scans
from hub.audit import AuditHead, AuditRow, AuditVerification, verify_chain
from hub.store.base import (
    AuditEntry,
    AuditQuery,
    BatchConflict,
    BatchInsert,
    BatchKey,
    Checkin,
    DeadLetter,
    HeldScan,
    Hold,
    InsertResult,
    NewDeadLetter,
    StoredScan,
    StoreError,
)
from hub.store.common import (
    AUDIT_INSERT,
    SqlConnection,
    append_audit,
    dead_letter_aad,
    open_audit_reason,
    scan_aad,
    scan_digest,
    scan_row,
    seal_audit_reason,
    seal_dead_letter,
)
from hub.store.common_reports import SqlReports
from hub.store.common_trace import LATEST_OF_SQL, SqlTrace
from hub.store.common_users import SqlUsers
from hub.vault import SealedDataError, Vault

__all__ = ["CHECKINS_AT_SQL", "CHECKINS_OF_SQL", "SqlStore"]

_CHECKIN_COLUMNS = "scan_id, venue_id, scanned_at_ms, identity"
HELD_COLUMNS = (
    "scan_id, unit_id, venue_id, scanned_at_ms, clock_trusted, person_key, kind, identity, "
    "source, received_at_ms, name_key"
)
"""`hub.store.common.SCAN_COLUMNS`, in ``held_scans``: a released row is filed as it was."""
_AUDIT_COLUMNS = "id, at_ms, action, reason, params_json, prev_hash, hash"
_ORDER_BY_TIME = " AND scanned_at_ms BETWEEN ? AND ? ORDER BY scanned_at_ms, scan_id"

# The visitor list's and the timeline's queries, public so that a test can EXPLAIN exactly
# what the store runs (the trace's are in `hub.store.common_trace`).
CHECKINS_OF_SQL = f"SELECT {_CHECKIN_COLUMNS} FROM scans WHERE person_key = ?{_ORDER_BY_TIME}"  # noqa: S608
"""Parameters: the person's pseudonym, since_ms, until_ms."""
CHECKINS_AT_SQL = f"SELECT {_CHECKIN_COLUMNS} FROM scans WHERE venue_id = ?{_ORDER_BY_TIME}"  # noqa: S608
"""Parameters: venue_id, start_ms, end_ms."""


class _New:
    def __repr__(self) -> str:
        return "NEW"


NEW = _New()
"""What `_file_scans` says of a row it inserted."""
Filed = _New | str | None


class SqlStore(SqlReports, SqlUsers, SqlTrace, Closeable):
    """The shared body of `SqliteStore` and `PostgresStore`; not opened on its own."""

    _vault: Vault
    _where: str
    _audit_insert = AUDIT_INSERT

    # -- what a backend provides ---------------------------------------------------------

    def _snapshot(self) -> AbstractContextManager[SqlConnection]:
        raise NotImplementedError

    def _file_scans(
        self,
        conn: SqlConnection,
        rows: list[tuple[Any, ...]],
        digests: list[str | None],
        holds: list[Hold | None],
    ) -> list[Filed]:
        """Insert the rows (`scan_row`) whose scan id is not stored, held or not.

        For each row: `NEW`, or the digest the scan already stored under its id has
        (None if it has none). A row with a `Hold` goes to ``held_scans``.
        """
        raise NotImplementedError

    def _refile_released(self, conn: SqlConnection, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows taken out of ``held_scans`` (`HELD_COLUMNS` and the digest) in ``scans``."""
        raise NotImplementedError

    def _purge_scans(self, conn: SqlConnection, cutoff_ms: int) -> int:
        """Delete scans scanned or received before the cutoff; return how many."""
        raise NotImplementedError

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
        registered_ms = None if unit.registered_at is None else to_ms(unit.registered_at)
        with self._transaction() as conn:
            # A record without registered_at (written before it existed) keeps the one known.
            conn.execute(
                "INSERT INTO units (unit_id, venue_id, active, registered_at_ms) "
                "VALUES (?, ?, ?, ?) "
                "ON CONFLICT (unit_id) DO UPDATE SET venue_id = excluded.venue_id, "
                "active = excluded.active, registered_at_ms = "
                "COALESCE(excluded.registered_at_ms, units.registered_at_ms)",
                (unit.unit_id, unit.venue_id, unit.active, registered_ms),
            )

    def set_fleet_keys(self, keys_json: str, received_at: datetime) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO fleet_keys (one_row, keys_json, received_at_ms) VALUES (1, ?, ?) "
                "ON CONFLICT (one_row) DO UPDATE SET keys_json = excluded.keys_json, "
                "received_at_ms = excluded.received_at_ms",
                (keys_json, to_ms(received_at)),
            )

    def forget_fleet_keys(self) -> bool:
        with self._transaction() as conn:
            return bool(conn.execute("DELETE FROM fleet_keys").rowcount)

    def fleet_keys(self) -> tuple[str, datetime] | None:
        rows = self._query("SELECT keys_json, received_at_ms FROM fleet_keys", ())
        return (str(rows[0][0]), from_ms(int(rows[0][1]))) if rows else None

    def venue(self, venue_id: str) -> VenueRecord | None:
        rows = self._query(
            "SELECT venue_id, name, address, district FROM venues WHERE venue_id = ?", (venue_id,)
        )
        return _venue(rows[0]) if rows else None

    def unit(self, unit_id: str) -> UnitRecord | None:
        rows = self._query(
            "SELECT unit_id, venue_id, active, registered_at_ms FROM units WHERE unit_id = ?",
            (unit_id,),
        )
        if not rows:
            return None
        unit_id, venue_id, active, registered_ms = rows[0]
        return UnitRecord(
            unit_id=unit_id,
            venue_id=venue_id,
            active=bool(active),
            registered_at=None if registered_ms is None else from_ms(registered_ms),
        )

    def venues(self) -> list[VenueRecord]:
        rows = self._query("SELECT venue_id, name, address, district FROM venues ORDER BY venue_id")
        return [_venue(row) for row in rows]

    # -- scans and dead letters --------------------------------------------------------

    def insert_scans(
        self,
        scans: Sequence[StoredScan],
        received_at: datetime,
        batch: BatchKey | None = None,
        letters: Sequence[NewDeadLetter] = (),
    ) -> InsertResult:
        """Store every scan and dead letter in one transaction; see `hub.store.base`.

        A scan id already stored is a duplicate when its digest is the same (or either
        has none), a conflict otherwise: a conflict is not stored and is dead-lettered
        ``scan_id_conflict`` here. With `batch`, the batch id is recorded in the same
        transaction; the same batch arriving again (the broker redelivers after a hub
        crash, or someone replays it) is reported as `replayed` and its `letters` are
        not written twice; the same id with other scans raises `BatchConflict` and
        stores nothing. Raises (and stores nothing) if any scan breaks a constraint,
        e.g. names an unknown venue or unit.
        """
        received_ms = to_ms(received_at)
        # Sealed before the transaction: the write lock is not held while hashing.
        sealed = self._sealed(scans, received_ms)
        with self._transaction() as conn:
            return self._insert(conn, scans, sealed, batch, letters, received_ms)

    def insert_batches(
        self, batches: Sequence[BatchInsert], received_at: datetime
    ) -> list[InsertResult | BatchConflict]:
        """`hub.store.base.ScanSink.insert_batches`: several units' batches, one commit."""
        received_ms = to_ms(received_at)
        sealed = [self._sealed(item.scans, received_ms) for item in batches]
        outcomes: list[InsertResult | BatchConflict] = []
        with self._transaction() as conn:
            for item, (rows, digests) in zip(batches, sealed, strict=True):
                try:
                    outcomes.append(
                        self._insert(
                            conn, item.scans, (rows, digests), item.batch, item.letters, received_ms
                        )
                    )
                except BatchConflict as conflict:  # raised before it wrote anything
                    outcomes.append(conflict)
        return outcomes

    def _sealed(
        self, scans: Sequence[StoredScan], received_ms: int
    ) -> tuple[list[tuple[Any, ...]], list[str | None]]:
        """The scans' rows (`scan_row`) and digests, computed outside any transaction."""
        return (
            [scan_row(self._vault, scan, received_ms) for scan in scans],
            [scan_digest(self._vault, scan) for scan in scans],
        )

    def _insert(
        self,
        conn: SqlConnection,
        scans: Sequence[StoredScan],
        sealed: tuple[list[tuple[Any, ...]], list[str | None]],
        batch: BatchKey | None,
        letters: Sequence[NewDeadLetter],
        received_ms: int,
    ) -> InsertResult:
        """One batch inside the caller's transaction: `insert_scans` without the commit."""
        rows, digests = sealed
        replayed = False
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
                    # Before anything of this batch is written: a group commit goes on.
                    raise BatchConflict(
                        f"batch {batch.batch_id} was received before with other scans"
                    )
                replayed = True
        filed = self._file_scans(conn, rows, digests, [scan.hold for scan in scans]) if rows else []
        new, duplicate, conflict = [], [], []
        for scan, digest, outcome in zip(scans, digests, filed, strict=True):
            if outcome is NEW:
                new.append(scan.scan_id)
            elif outcome is None or digest is None or outcome == digest:
                duplicate.append(scan.scan_id)
            else:
                conflict.append(scan.scan_id)
                self._write_dead_letter(conn, _conflict_letter(scan), received_ms)
        if not replayed:
            for letter in letters:
                self._write_dead_letter(conn, letter, received_ms)
        return InsertResult(new, duplicate, replayed, conflict)

    def add_dead_letter(
        self, source: str, topic: str, payload: bytes, code: str, reason: str, received_at: datetime
    ) -> None:
        """Keep a refused message; its payload and reason are sealed, bound to the row's id."""
        with self._transaction() as conn:
            self._write_dead_letter(
                conn, NewDeadLetter(source, topic, payload, code, reason), to_ms(received_at)
            )

    def _write_dead_letter(self, conn: SqlConnection, letter: NewDeadLetter, at_ms: int) -> None:
        # The row's id is known only after the insert, and the seal is bound to it.
        ((letter_id,),) = conn.execute(
            "INSERT INTO dead_letters (received_at_ms, source, topic, payload, code, reason) "
            "VALUES (?, ?, ?, ?, ?, '') RETURNING id",
            (at_ms, letter.source, letter.topic, b"", letter.code),
        ).fetchall()
        sealed = seal_dead_letter(self._vault, letter_id, bytes(letter.payload), letter.reason)
        conn.execute("UPDATE dead_letters SET payload = ? WHERE id = ?", (sealed, letter_id))

    # -- scans held apart from traces ----------------------------------------------------

    def held_scans(self, limit: int = 100) -> list[HeldScan]:
        """The newest `limit` held scans, newest received first; no identity."""
        rows = self._query(
            "SELECT scan_id, unit_id, venue_id, scanned_at_ms, received_at_ms, held_code, "
            "held_reason FROM held_scans ORDER BY received_at_ms DESC, scan_id LIMIT ?",
            (int(limit),),
        )
        return [
            HeldScan(scan_id, unit, venue, from_ms(at_ms), from_ms(got_ms), code, reason)
            for scan_id, unit, venue, at_ms, got_ms, code, reason in rows
        ]

    def release_held(self, scan_ids: Sequence[str]) -> list[str]:
        """Move held scans into the scans traces read, in one transaction; return their ids."""
        ids = sorted(set(scan_ids))
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        with self._transaction() as conn:
            rows = conn.execute(
                f"DELETE FROM held_scans WHERE scan_id IN ({marks}) "  # noqa: S608
                f"RETURNING {HELD_COLUMNS}, {self._held_digest_column}",
                ids,
            ).fetchall()
            if rows:
                self._refile_released(conn, [tuple(row) for row in rows])
        return sorted(str(row[0]) for row in rows)

    # Where a held scan's digest is: SQLite keeps it in the row, PostgreSQL in scan_ids.
    _held_digest_column = "NULL"

    def unit_traced_scans(self, unit_id: str, since_ms: int, until_ms: int) -> dict[str, int]:
        """The unit's traced scans in [since, until]: `scanned_at_ms` by scan id.

        By id, so that a scan sent again (stored, its ack lost) is counted once.
        """
        rows = self._query(
            "SELECT scan_id, scanned_at_ms FROM scans "
            "WHERE unit_id = ? AND scanned_at_ms BETWEEN ? AND ?",
            (unit_id, since_ms, until_ms),
        )
        return {str(scan_id): int(ms) for (scan_id, ms) in rows}

    def remove_dead_letters(self, letter_ids: Sequence[int]) -> int:
        """Delete dead letters a replay recovered (`hub.replay`); how many went."""
        removed = 0
        with self._transaction() as conn:
            for letter_id in letter_ids:
                removed += conn.execute(
                    "DELETE FROM dead_letters WHERE id = ?", (int(letter_id),)
                ).rowcount
        return removed

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
            raise StoreError(f"{self._where}: a {what} has no sealed identity (a clear row?)")
        try:
            return self._vault.open(bytes(sealed), aad)
        except SealedDataError as exc:
            raise StoreError(
                f"{self._where}: {what} {aad.decode('utf-8', 'replace')}: {exc}"
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
        rows = self._query(CHECKINS_OF_SQL, (self._vault.blind(person_key), since_ms, until_ms))
        return [self._checkin(row) for row in rows]

    def checkins_at(self, venue_id: str, start_ms: int, end_ms: int) -> list[Checkin]:
        """The venue's check-ins with start <= time <= end, oldest first."""
        rows = self._query(CHECKINS_AT_SQL, (venue_id, start_ms, end_ms))
        return [self._checkin(row) for row in rows]

    def person(self, person_key: str) -> tuple[str, str] | None:
        """(id_number, name) from the person's latest scan, or None if never seen."""
        rows = self._query(LATEST_OF_SQL, (self._vault.blind(person_key),))
        if not rows:
            return None
        latest = self._checkin(rows[0])
        return latest.id_number, latest.name

    # -- audit -----------------------------------------------------------------------

    def record_audit(self, action: str, reason: str, params: dict[str, Any], at: datetime) -> int:
        """Append an entry to the chain; return its id.

        The head is read and moved inside the insert's write transaction, so two
        writers, threads or processes, cannot both chain from the same entry.
        """
        with self._transaction() as conn:
            return self._append_audit(conn, action, reason, params, at)

    def _append_audit(
        self, conn: SqlConnection, action: str, reason: str, params: dict[str, Any], at: datetime
    ) -> int:
        sealed = seal_audit_reason(self._vault, reason)
        try:
            return append_audit(conn, action, sealed, params, at, insert_sql=self._audit_insert)
        except StoreError as exc:
            raise StoreError(f"{self._where}: {exc}") from None

    def audit_entries(self, limit: int = 100, query: AuditQuery | None = None) -> list[AuditEntry]:
        """The newest `limit` audit rows matching `query`, newest first, reasons opened.

        Action and period are filtered in SQL; the account in the entry's parameters
        (``principal.account``, or ``account`` for account events) as rows are read.
        """
        query = query or AuditQuery()
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if query.action is not None:
            where.append("action = ?")
            args.append(query.action)
        if query.since is not None:
            where.append("at_ms >= ?")
            args.append(to_ms(query.since))
        if query.until is not None:
            where.append("at_ms <= ?")
            args.append(to_ms(query.until))
        sql = (
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY id DESC"
        )
        entries: list[AuditEntry] = []
        with self._snapshot() as conn:
            for id, at_ms, action, reason, params_json, prev, digest in conn.execute(sql, args):
                params = json.loads(params_json)
                if query.account is not None and _entry_account(params) != query.account:
                    continue
                opened = self._open_reason(reason)
                entries.append(AuditEntry(id, from_ms(at_ms), action, opened, params, prev, digest))
                if len(entries) >= limit:
                    break
        return entries

    def _open_reason(self, stored: str) -> str:
        try:
            return open_audit_reason(self._vault, stored)
        except (SealedDataError, ValueError):
            return "(a reason that does not open with this vault key)"

    def audit_hash_at(self, entry_id: int) -> str | None:
        """The stored hash of entry `entry_id`, or None if there is no such entry."""
        rows = self._query("SELECT hash FROM audit WHERE id = ?", (int(entry_id),))
        return str(rows[0][0]) if rows else None

    def verify_audit(self) -> AuditVerification:
        """Check the whole chain and its head (`hub.audit.verify_chain`).

        Detects an edited entry, a deleted one (a gap in ids or a broken link), one
        moved to another place, and deleted newest entries (through ``audit_head``).
        A chain alone cannot see a truncated tail; the head can. Neither stops someone
        who rewrites every hash: compare `head_hash` with one noted elsewhere.
        """
        # One snapshot: the rows and the head agree even while ingest appends.
        with self._snapshot() as conn:
            head_row = conn.execute(
                "SELECT last_id, last_hash, entries FROM audit_head WHERE one_row = 1"
            ).fetchone()
            cursor = conn.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id")  # noqa: S608
            head = None if head_row is None else AuditHead(*head_row)
            return verify_chain((AuditRow(*row) for row in cursor), head)

    # -- retention -------------------------------------------------------------------

    def purge_older_than(
        self,
        cutoff: datetime,
        *,
        at: datetime | None = None,
        reason: str = "retention",
        by: dict[str, Any] | None = None,
    ) -> dict[str, int]:
        """Delete what is older than `cutoff` (strictly: a row at exactly `cutoff` stays).

        Scans go by ``scanned_at`` and also by ``received_at``, so that no time in
        the database is older than the cutoff (the two differ only for a scan dated up
        to 5 minutes ahead of the hub's clock); dead letters and batch ids by
        ``received_at``. One transaction, which also writes a ``purge`` audit entry
        (at `at`, default now) with the cutoff and the counts: a purge without its
        record cannot happen. The audit log itself is kept; see docs/decisions.md.
        """
        cutoff_ms = to_ms(cutoff)
        with self._transaction() as conn:
            counts = {
                "scans": self._purge_scans(conn, cutoff_ms),
                "dead_letters": conn.execute(
                    "DELETE FROM dead_letters WHERE received_at_ms < ?", (cutoff_ms,)
                ).rowcount,
                "batches": conn.execute(
                    "DELETE FROM batches WHERE received_at_ms < ?", (cutoff_ms,)
                ).rowcount,
                "held_scans": conn.execute(
                    "DELETE FROM held_scans WHERE scanned_at_ms < ? OR received_at_ms < ?",
                    (cutoff_ms, cutoff_ms),
                ).rowcount,
                # Addresses of failed logins are about people too; the throttle needs
                # only its window of them.
                "login_failures": conn.execute(
                    "DELETE FROM login_failures WHERE at_ms < ?", (cutoff_ms,)
                ).rowcount,
            }
            params: dict[str, Any] = {"cutoff": format_rfc3339(cutoff), "deleted": counts}
            if by is not None:
                params["principal"] = by  # who purged (`hub.access.Principal.to_audit`)
            self._append_audit(conn, "purge", reason, params, at or datetime.now(UTC))
        return counts

    def counts(self) -> dict[str, int]:
        with self._snapshot() as conn:

            def one(sql: str) -> int:
                return int(conn.execute(sql).fetchone()[0])

            return {
                "scans": one("SELECT COUNT(*) FROM scans"),
                "people": one("SELECT COUNT(DISTINCT person_key) FROM scans"),
                "venues": one("SELECT COUNT(*) FROM venues"),
                "units": one("SELECT COUNT(*) FROM units"),
                "dead_letters": one("SELECT COUNT(*) FROM dead_letters"),
                "held": one("SELECT COUNT(*) FROM held_scans"),
            }


def _entry_account(params: dict[str, Any]) -> str | None:
    principal = params.get("principal")
    if isinstance(principal, dict) and isinstance(principal.get("account"), str):
        return str(principal["account"])
    account = params.get("account")
    return account if isinstance(account, str) else None


def _conflict_letter(scan: StoredScan) -> NewDeadLetter:
    return NewDeadLetter(
        source=scan.source,
        topic=topic_scans(scan.unit_id) if scan.unit_id else scan.source,
        payload=scan.digest_basis or b"",
        code="scan_id_conflict",
        reason=f"scan id {scan.scan_id} was stored before with other content; not stored",
    )


def _venue(row: Sequence[Any]) -> VenueRecord:
    venue_id, name, address, district = row
    return VenueRecord(venue_id=venue_id, name=name, address=address, district=district)
