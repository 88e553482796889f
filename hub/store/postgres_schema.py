"""The PostgreSQL store's schema: its versioned migrations and its day partitions.

``schema_version`` (one row) holds the number of migrations applied. `migrate` runs
each missing one in its own transaction, under a transaction-scoped advisory lock, so
two hub workers opening a new database at once take turns instead of racing on
``CREATE TABLE``; a database with a higher number than this doorscan knows is refused.
A step is SQL, or a function of the connection and the vault for what needs Python.
Migrations are never edited once released: a change is a new migration.

The numbering is PostgreSQL's own: migration 1 is the SQLite schema 7 as it is today,
written once for PostgreSQL (no clear identity columns to carry, no rows to seal).
SQLite's migrations are history and are never edited, so the two DDLs stay apart.

Text keys are ``COLLATE "C"``: byte order, as SQLite compares, so ``ORDER BY`` answers
the same on both backends whatever the database's locale, and the btree indexes on
them serve plain comparisons.

Scans are partitioned by Vietnam day (`partition_day`, `ensure_partitions`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime

from hub.audit import GENESIS_HASH
from hub.store.base import StoreError
from hub.store.common import (
    DAY_MS,
    VIETNAM_OFFSET_MS,
    SqlConnection,
    day_of_number,
    day_start_ms,
    seal_clear_audit_reasons,
)
from hub.vault import Vault

__all__ = [
    "AUDIT_INSERT_PG",
    "LOCK_SQL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ensure_partitions",
    "migrate",
    "partition_day",
    "partition_name",
    "partitions",
]

LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('doorscan-hub:' || current_schema()))"
"""Serialises DDL (migrations, partitions made and dropped) between the hub's processes.

Keyed by schema, so that hubs (or tests) in other schemas of one database do not wait
for each other. Transaction-scoped: released by the COMMIT or ROLLBACK, never leaked.
"""

Step = str | Callable[[SqlConnection, Vault], None]


def _remember_vault(conn: SqlConnection, vault: Vault) -> None:
    conn.execute(
        "INSERT INTO vault_check (one_row, check_value) VALUES (1, ?)", (vault.check_value(),)
    )
    conn.execute(
        "INSERT INTO audit_head (one_row, last_id, last_hash, entries) VALUES (1, NULL, ?, 0)",
        (GENESIS_HASH,),
    )


MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    # 1: everything SQLite's schemas 1-7 hold, with scans partitioned by day.
    (
        """CREATE TABLE venues (
            venue_id TEXT COLLATE "C" PRIMARY KEY,
            name TEXT NOT NULL,
            address TEXT NOT NULL DEFAULT '',
            district TEXT COLLATE "C" NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE units (
            unit_id TEXT COLLATE "C" PRIMARY KEY,
            venue_id TEXT COLLATE "C" NOT NULL REFERENCES venues (venue_id),
            active BOOLEAN NOT NULL
        )""",
        # A partitioned table's unique keys must contain the partition key, so scan_id
        # cannot be unique in `scans` itself: this small table is what makes a resent
        # scan a duplicate (INSERT ... ON CONFLICT DO NOTHING), across all days. Its
        # time lets retention forget the ids of the scans it drops.
        """CREATE TABLE scan_ids (
            scan_id TEXT COLLATE "C" PRIMARY KEY,
            scanned_at_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX scan_ids_by_time ON scan_ids (scanned_at_ms)",
        """CREATE TABLE scans (
            scan_id TEXT COLLATE "C" NOT NULL,
            unit_id TEXT COLLATE "C" NULL REFERENCES units (unit_id),
            venue_id TEXT COLLATE "C" NOT NULL REFERENCES venues (venue_id),
            scanned_at_ms BIGINT NOT NULL,
            clock_trusted BOOLEAN NOT NULL,
            person_key TEXT COLLATE "C" NOT NULL,
            kind TEXT NOT NULL,
            identity BYTEA NOT NULL,
            source TEXT NOT NULL CHECK (source IN ('mqtt', 'csv')),
            received_at_ms BIGINT NOT NULL,
            name_key TEXT COLLATE "C" NULL
        ) PARTITION BY RANGE (scanned_at_ms)""",
        # Made on the parent, so every day partition gets them as it is created.
        "CREATE INDEX scans_by_venue_time ON scans (venue_id, scanned_at_ms)",
        "CREATE INDEX scans_by_person_time ON scans (person_key, scanned_at_ms)",
        "CREATE INDEX scans_by_name_key ON scans (name_key, scanned_at_ms)",
        "CREATE INDEX scans_by_unit_time ON scans (unit_id, scanned_at_ms)",
        # Only scans dated ahead of their reception (a fast unit clock, within the
        # ingest's tolerance): few, and what retention must find by received_at
        # without reading every day it keeps.
        "CREATE INDEX scans_dated_ahead ON scans (received_at_ms) "
        "WHERE scanned_at_ms > received_at_ms",
        """CREATE TABLE dead_letters (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            received_at_ms BIGINT NOT NULL,
            source TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BYTEA NOT NULL,
            code TEXT NOT NULL,
            reason TEXT NOT NULL
        )""",
        # No sequence: ids are numbered under the head's row lock (`AUDIT_INSERT_PG`).
        """CREATE TABLE audit (
            id BIGINT PRIMARY KEY,
            at_ms BIGINT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT NOT NULL,
            params_json TEXT NOT NULL,
            prev_hash TEXT NOT NULL DEFAULT '',
            hash TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE audit_head (
            one_row INTEGER PRIMARY KEY CHECK (one_row = 1),
            last_id BIGINT NULL,
            last_hash TEXT NOT NULL,
            entries BIGINT NOT NULL
        )""",
        """CREATE TABLE batches (
            batch_id TEXT COLLATE "C" PRIMARY KEY,
            unit_id TEXT COLLATE "C" NOT NULL,
            digest TEXT NOT NULL,
            received_at_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX batches_by_time ON batches (received_at_ms)",
        """CREATE TABLE vault_check (
            one_row INTEGER PRIMARY KEY CHECK (one_row = 1),
            check_value TEXT NOT NULL
        )""",
        """CREATE TABLE users (
            user_id TEXT COLLATE "C" PRIMARY KEY,
            display_name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('tracer', 'venue', 'reporter', 'admin')),
            venue_id TEXT COLLATE "C" NULL REFERENCES venues (venue_id),
            password_hash TEXT NOT NULL,
            active BOOLEAN NOT NULL,
            created_at_ms BIGINT NOT NULL,
            CHECK ((role = 'venue') = (venue_id IS NOT NULL))
        )""",
        """CREATE TABLE tokens (
            token_hash TEXT COLLATE "C" PRIMARY KEY,
            user_id TEXT COLLATE "C" NOT NULL REFERENCES users (user_id),
            kind TEXT NOT NULL CHECK (kind IN ('session', 'api')),
            created_at_ms BIGINT NOT NULL,
            expires_at_ms BIGINT NOT NULL,
            revoked BOOLEAN NOT NULL DEFAULT FALSE
        )""",
        "CREATE INDEX tokens_by_user ON tokens (user_id)",
        """CREATE TABLE unit_status (
            unit_id TEXT COLLATE "C" PRIMARY KEY,
            received_at_ms BIGINT NOT NULL,
            online BOOLEAN NOT NULL,
            status_json TEXT NOT NULL
        )""",
        _remember_vault,
    ),
    # 2: SQLite's schema 8: a keyed digest of each scan as sent (in scan_ids, which every
    # scan claims, held or not), scans held apart from traces, each unit's registration
    # and last drained status, and the remote configs the hub issued.
    (
        "ALTER TABLE scan_ids ADD COLUMN digest TEXT NULL",
        """CREATE TABLE held_scans (
            scan_id TEXT COLLATE "C" PRIMARY KEY,
            unit_id TEXT COLLATE "C" NULL,
            venue_id TEXT COLLATE "C" NOT NULL,
            scanned_at_ms BIGINT NOT NULL,
            clock_trusted BOOLEAN NOT NULL,
            person_key TEXT COLLATE "C" NOT NULL,
            kind TEXT NOT NULL,
            identity BYTEA NOT NULL,
            source TEXT NOT NULL,
            received_at_ms BIGINT NOT NULL,
            name_key TEXT COLLATE "C" NULL,
            held_code TEXT NOT NULL,
            held_reason TEXT NOT NULL
        )""",
        "CREATE INDEX held_scans_by_time ON held_scans (received_at_ms)",
        "ALTER TABLE units ADD COLUMN registered_at_ms BIGINT NULL",
        "ALTER TABLE unit_status ADD COLUMN drained_at_ms BIGINT NULL",
        """CREATE TABLE unit_configs (
            unit_id TEXT COLLATE "C" NOT NULL,
            version BIGINT NOT NULL,
            settings_json TEXT NOT NULL,
            issued_at_ms BIGINT NOT NULL,
            PRIMARY KEY (unit_id, version)
        )""",
    ),
    # 3: SQLite's schema 9: failed logins in the database; audit reasons sealed.
    (
        """CREATE TABLE login_failures (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            key TEXT COLLATE "C" NOT NULL,
            at_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX login_failures_by_key ON login_failures (key, at_ms)",
        lambda conn, vault: seal_clear_audit_reasons(
            conn, vault, datetime.now(UTC), insert_sql=AUDIT_INSERT_PG
        ),
    ),
    # 4: SQLite's schema 10: the fleet's public keys as last published.
    (
        """CREATE TABLE fleet_keys (
            one_row INTEGER PRIMARY KEY CHECK (one_row = 1),
            keys_json TEXT NOT NULL,
            received_at_ms BIGINT NOT NULL
        )""",
    ),
    # 5: SQLite's schema 11: narrow covering indexes for the trace, so that its reads
    # are Index Only Scans that never touch a row's sealed identity. Made on the parent
    # like those of migration 1, so every day partition has them. The other person or
    # venue is an INCLUDE column: nothing searches or orders by it after the unique
    # scan id, so it need not be a key (and stays out of the btree's inner pages).
    # They serve every read the two indexes of migration 1 served, which go.
    (
        "CREATE INDEX scans_by_venue_covering "
        "ON scans (venue_id, scanned_at_ms, scan_id) INCLUDE (person_key)",
        "CREATE INDEX scans_by_person_covering "
        "ON scans (person_key, scanned_at_ms, scan_id) INCLUDE (venue_id)",
        "DROP INDEX scans_by_venue_time",
        "DROP INDEX scans_by_person_time",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

AUDIT_INSERT_PG = (
    "INSERT INTO audit (id, at_ms, action, reason, params_json, prev_hash, hash) "
    "SELECT COALESCE(MAX(id), 0) + 1, ?, ?, ?, ?, ?, '' FROM audit RETURNING id"
)
"""`hub.store.common.AUDIT_INSERT` without a sequence: the caller holds the head's row
lock, so ``MAX(id) + 1`` is taken by one appender at a time, and a rolled-back append
leaves no gap that `verify_audit` would read as a deleted entry."""


def migrate(
    transaction: Callable[[], AbstractContextManager[SqlConnection]], vault: Vault, where: str
) -> None:
    """Bring the database to `SCHEMA_VERSION`; `transaction()` opens one."""
    for number in range(1, SCHEMA_VERSION + 1):
        with transaction() as conn:
            conn.execute(LOCK_SQL)
            # Under the lock: another worker may have migrated while this one waited.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "one_row INTEGER PRIMARY KEY CHECK (one_row = 1), version INTEGER NOT NULL)"
            )
            conn.execute(
                "INSERT INTO schema_version (one_row, version) VALUES (1, 0) "
                "ON CONFLICT (one_row) DO NOTHING"
            )
            (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{where} has hub schema {version} (PostgreSQL); this doorscan knows up "
                    f"to {SCHEMA_VERSION} (was it written by a newer doorscan?)"
                )
            if version >= 1:
                _check_vault(conn, vault, where)
            if version >= number:
                continue
            for step in MIGRATIONS[number - 1]:
                if isinstance(step, str):
                    conn.execute(step)
                else:
                    step(conn, vault)
            conn.execute("UPDATE schema_version SET version = ?", (number,))


def _check_vault(conn: SqlConnection, vault: Vault, where: str) -> None:
    row = conn.execute("SELECT check_value FROM vault_check WHERE one_row = 1").fetchone()
    if row is None:
        raise StoreError(f"{where}: the vault_check row is missing")
    if not hmac.compare_digest(str(row[0]), vault.check_value()):
        raise StoreError(
            f"{where}: this hub database was written with another vault key "
            "(give the key it was created with: --vault-key or DOORSCAN_HUB_VAULT_KEY)"
        )


# -- day partitions -------------------------------------------------------------------------


def partition_day(at_ms: int) -> date:
    """The Vietnam date whose partition holds a scan at `at_ms`."""
    return day_of_number((at_ms + VIETNAM_OFFSET_MS) // DAY_MS)


def partition_name(day: date) -> str:
    return f"scans_{day:%Y%m%d}"


def ensure_partitions(conn: SqlConnection, days: Iterable[date]) -> None:
    """Create the partitions of `days` that do not exist; the caller holds `LOCK_SQL`.

    IF NOT EXISTS makes a partition another worker made first harmless; the lock makes
    the check and the creation one step (two concurrent CREATEs of one name can fail).
    No DEFAULT partition: every day gets its own before its rows are inserted, so no
    row needs one, and a default partition would have to be scanned (and emptied)
    each time a day's partition is created after rows of that day landed in it.
    """
    for day in sorted(set(days)):
        start = day_start_ms(day)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF scans "
            f"FOR VALUES FROM ({start}) TO ({start + DAY_MS})"
        )


def partitions(conn: SqlConnection) -> dict[date, str]:
    """The day partitions of ``scans`` in the store's schema, by Vietnam date."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'scans'::regclass"
    ).fetchall()
    found = {}
    for (name,) in rows:
        digits = str(name).removeprefix("scans_")
        if len(digits) == 8 and digits.isdigit():
            found[date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))] = str(name)
    return found
