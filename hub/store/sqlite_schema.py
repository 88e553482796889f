"""The SQLite store's schema: its migrations, in order, and the helpers they share.

Each migration is a tuple of steps run in one transaction by `SqliteStore` when it
opens an older file; ``PRAGMA user_version`` is the number of migrations applied. A
step is SQL, or a function for what SQL cannot do (hashing or sealing existing rows),
called with the connection and the store's vault. Migrations are never edited once
released: a change is a new migration.

Migration 5 seals the rows an older file holds in the clear exactly as the store seals
new ones, with the helpers of `hub.store.common` (re-exported here for older imports).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

from hub.audit import GENESIS_HASH, entry_hash
from hub.scan_ids import csv_scan_id
from hub.store.common import (
    append_audit,
    dead_letter_aad,
    name_key,
    scan_aad,
    seal_clear_audit_reasons,
    seal_dead_letter,
    seal_identity,
)
from hub.vault import Vault

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "VAULT_SCHEMA",
    "Step",
    "append_audit",
    "dead_letter_aad",
    "name_key",
    "scan_aad",
    "seal_dead_letter",
    "seal_identity",
]

VAULT_SCHEMA = 5
"""From this schema on, the file remembers its vault's check value."""

# A migration step is SQL, or a function for what SQL cannot do (hashing or sealing
# existing rows); a function gets the store's vault.
Step = str | Callable[[sqlite3.Connection, Vault], None]


def _fill_name_keys(conn: sqlite3.Connection, vault: Vault) -> None:
    """Index the names of scans stored before schema 7 (each identity opened once)."""
    rows = conn.execute(
        "SELECT scan_id, identity FROM scans WHERE name_key IS NULL AND identity IS NOT NULL"
    ).fetchall()
    for scan_id, sealed in rows:
        identity = json.loads(vault.open(bytes(sealed), scan_aad(scan_id)))
        key = name_key(vault, str(identity.get("name") or ""))
        if key is not None:
            conn.execute("UPDATE scans SET name_key = ? WHERE scan_id = ?", (key, scan_id))


def _chain_audit(conn: sqlite3.Connection) -> tuple[int | None, str, int]:
    """Hash every entry from the first, in id order; return the head (last id, hash, count)."""
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
    return last_id, prev_hash, count


def _chain_existing_audit(conn: sqlite3.Connection, _vault: Vault) -> None:
    """Hash the entries written before the chain existed, in id order, and set the head."""
    conn.execute(
        "INSERT INTO audit_head (one_row, last_id, last_hash, entries) VALUES (1, ?, ?, ?)",
        _chain_audit(conn),
    )


def _seal_existing_rows(conn: sqlite3.Connection, vault: Vault) -> None:
    """Seal what a file from before schema 5 holds in the clear; remember the vault.

    Scans: the person key becomes its pseudonym, the identity one sealed blob, the
    clear columns empty. Imported scans also get a new scan id, because theirs was an
    unkeyed hash of the person key (`hub.scan_ids`). Dead letters: payload and reason
    sealed. Audit: trace entries name their subject by pseudonym (`_pseudonymise_audit`).
    """
    conn.execute(
        "INSERT INTO vault_check (one_row, check_value) VALUES (1, ?)", (vault.check_value(),)
    )
    rows = conn.execute(
        "SELECT scan_id, venue_id, scanned_at_ms, source, person_key, kind, id_number, name, "
        "birth_date, sex, address FROM scans WHERE identity IS NULL"
    ).fetchall()
    for scan_id, venue_id, at_ms, source, key, kind, id_number, name, birth, sex, address in rows:
        subject = vault.blind(key)
        new_id = csv_scan_id(venue_id, at_ms, subject) if source == "csv" else scan_id
        identity = {
            "person_key": key,
            "kind": kind,
            "id_number": id_number,
            "name": name,
            "birth_date": birth,
            "sex": sex,
            "address": address,
        }
        conn.execute(
            "UPDATE scans SET scan_id = ?, person_key = ?, identity = ?, id_number = '', "
            "name = '', birth_date = NULL, sex = NULL, address = NULL WHERE scan_id = ?",
            (new_id, subject, seal_identity(vault, new_id, identity), scan_id),
        )
    for letter_id, payload, reason in conn.execute(
        "SELECT id, payload, reason FROM dead_letters"
    ).fetchall():
        conn.execute(
            "UPDATE dead_letters SET payload = ?, reason = '' WHERE id = ?",
            (seal_dead_letter(vault, letter_id, bytes(payload), reason), letter_id),
        )
    _pseudonymise_audit(conn, vault)


def _pseudonymise_audit(conn: sqlite3.Connection, vault: Vault) -> None:
    """Replace the clear ID of traces audited before schema 5 by its pseudonym.

    This edits entries of a hash chain, so the chain is hashed again from the first
    entry, and a ``vault-migration`` entry records the head hash from before: whoever
    noted that hash elsewhere can see that the hub itself rewrote the chain, and when.
    A file with no trace entries keeps its chain untouched.
    """
    rewritten = 0
    for entry_id, params_json in conn.execute(
        "SELECT id, params_json FROM audit WHERE action = 'trace' ORDER BY id"
    ).fetchall():
        params = json.loads(params_json)
        if "person_key" not in params:
            continue
        params["subject"] = vault.blind(str(params.pop("person_key")))
        params.pop("id", None)
        conn.execute(
            "UPDATE audit SET params_json = ? WHERE id = ?",
            (json.dumps(params, ensure_ascii=False, sort_keys=True), entry_id),
        )
        rewritten += 1
    if not rewritten:
        return
    (previous_head,) = conn.execute("SELECT last_hash FROM audit_head WHERE one_row = 1").fetchone()
    conn.execute(
        "UPDATE audit_head SET last_id = ?, last_hash = ?, entries = ? WHERE one_row = 1",
        _chain_audit(conn),
    )
    append_audit(
        conn,
        "vault-migration",
        "identities sealed at rest (schema 5): traced IDs replaced by pseudonyms",
        {"previous_head": previous_head, "entries_rewritten": rewritten},
        datetime.now(UTC),
    )


# Times are BIGINT: milliseconds overflow PostgreSQL's 32-bit INTEGER (SQLite does not care).
MIGRATIONS: tuple[tuple[Step, ...], ...] = (
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
    # 5: identities sealed at rest, person keys blinded (hub.vault); the file remembers
    # its vault, and rows written in the clear before are sealed here.
    (
        """CREATE TABLE vault_check (
            one_row INTEGER PRIMARY KEY CHECK (one_row = 1),
            check_value TEXT NOT NULL
        )""",
        "ALTER TABLE scans ADD COLUMN identity BLOB NULL",
        _seal_existing_rows,
    ),
    # 6: the people who use the hub's web pages and API, and their tokens (hub.auth).
    # Staff, not visitors: their names are not sealed. A token is kept as its SHA-256
    # only, so a copy of the database cannot be used to log in.
    (
        """CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            display_name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('tracer', 'venue', 'reporter', 'admin')),
            venue_id TEXT NULL REFERENCES venues (venue_id),
            password_hash TEXT NOT NULL,
            active BOOLEAN NOT NULL,
            created_at_ms BIGINT NOT NULL,
            CHECK ((role = 'venue') = (venue_id IS NOT NULL))
        )""",
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (user_id),
            kind TEXT NOT NULL CHECK (kind IN ('session', 'api')),
            created_at_ms BIGINT NOT NULL,
            expires_at_ms BIGINT NOT NULL,
            revoked BOOLEAN NOT NULL DEFAULT FALSE
        )""",
        "CREATE INDEX tokens_by_user ON tokens (user_id)",
    ),
    # 7: each unit's latest status (retained on the broker, kept here for the units page),
    # and a keyed index of folded names (hub.namefold), so "nguyen van an" finds
    # "Nguyễn Văn An" while names stay sealed; names of older scans are indexed here.
    # Scans by unit and time, for each unit's last scan on the units page.
    (
        """CREATE TABLE unit_status (
            unit_id TEXT PRIMARY KEY,
            received_at_ms BIGINT NOT NULL,
            online BOOLEAN NOT NULL,
            status_json TEXT NOT NULL
        )""",
        "ALTER TABLE scans ADD COLUMN name_key TEXT NULL",
        "CREATE INDEX scans_by_name_key ON scans (name_key, scanned_at_ms)",
        "CREATE INDEX scans_by_unit_time ON scans (unit_id, scanned_at_ms)",
        _fill_name_keys,
    ),
    # 8: every message settled. A keyed digest of each scan as its unit sent it, so a
    # scan id reused with other content is a conflict, not a duplicate (NULL in older
    # rows: they count as the same); scans held apart from traces (hub.history); when
    # each unit was registered and last said it had nothing unsent; the remote configs
    # the hub issued (hub unit-config), so versions never depend on what a broker kept.
    (
        "ALTER TABLE scans ADD COLUMN content_digest TEXT NULL",
        """CREATE TABLE held_scans (
            scan_id TEXT PRIMARY KEY,
            unit_id TEXT NULL,
            venue_id TEXT NOT NULL,
            scanned_at_ms BIGINT NOT NULL,
            clock_trusted BOOLEAN NOT NULL,
            person_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            identity BLOB NOT NULL,
            source TEXT NOT NULL,
            received_at_ms BIGINT NOT NULL,
            name_key TEXT NULL,
            content_digest TEXT NULL,
            held_code TEXT NOT NULL,
            held_reason TEXT NOT NULL
        )""",
        "CREATE INDEX held_scans_by_time ON held_scans (received_at_ms)",
        "ALTER TABLE units ADD COLUMN registered_at_ms BIGINT NULL",
        "ALTER TABLE unit_status ADD COLUMN drained_at_ms BIGINT NULL",
        """CREATE TABLE unit_configs (
            unit_id TEXT NOT NULL,
            version BIGINT NOT NULL,
            settings_json TEXT NOT NULL,
            issued_at_ms BIGINT NOT NULL,
            PRIMARY KEY (unit_id, version)
        )""",
    ),
    # 9: accountable access. Failed logins (and logins being checked) kept in the
    # database, so every web process counts the same and a restart forgets nothing
    # (hub.login_throttle); audit reasons encrypted like identities.
    (
        """CREATE TABLE login_failures (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL,
            at_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX login_failures_by_key ON login_failures (key, at_ms)",
        lambda conn, vault: seal_clear_audit_reasons(conn, vault, datetime.now(UTC)),
    ),
    # 10: the fleet's public keys as last published (`FleetKeys`), so that a hub whose
    # keys do not match refuses to start before it takes a scan (hub.keycheck).
    (
        """CREATE TABLE fleet_keys (
            one_row INTEGER PRIMARY KEY CHECK (one_row = 1),
            keys_json TEXT NOT NULL,
            received_at_ms BIGINT NOT NULL
        )""",
    ),
    # 11: narrow covering indexes for the trace (hub.store.common_trace): who was at a
    # venue in a window, and where a person went, answered from the index alone, never
    # reading a row with its ~300-byte sealed identity. The scan id comes before the
    # other person or venue so that the index's order is the reads' (time, then scan id)
    # and a visitor list or timeline needs no sort. Each begins with the columns of an
    # index of migration 1, which it serves as well (the reports' last scan per venue
    # too): those two would only cost every insert a third and fourth index update.
    (
        "CREATE INDEX scans_by_venue_covering "
        "ON scans (venue_id, scanned_at_ms, scan_id, person_key)",
        "CREATE INDEX scans_by_person_covering "
        "ON scans (person_key, scanned_at_ms, scan_id, venue_id)",
        "DROP INDEX scans_by_venue_time",
        "DROP INDEX scans_by_person_time",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
