"""What both hub store backends share: sealing, pseudonyms, day numbers, the audit append.

Nothing here knows SQLite or PostgreSQL. SQL shared by the two is written with ``?``
placeholders, SQLite's; the PostgreSQL store runs it through `to_format_params` (``%s``),
so one constant serves both and the two backends cannot drift apart.

A connection is anything with ``execute(sql, params) -> cursor`` (`SqlConnection`):
a `sqlite3.Connection` is one, and the PostgreSQL store hands its own adapter.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from doorscan.payloads import Identity
from doorscan.timefmt import to_ms
from hub.audit import GENESIS_HASH, entry_hash
from hub.namefold import fold
from hub.store.base import StoredScan, StoreError
from hub.vault import Vault

__all__ = [
    "AUDIT_INSERT",
    "DAY_MS",
    "SCAN_COLUMNS",
    "VIETNAM_OFFSET_MS",
    "SqlConnection",
    "SqlCursor",
    "append_audit",
    "day_of_number",
    "day_start_ms",
    "dead_letter_aad",
    "identity_fields",
    "name_key",
    "open_audit_reason",
    "scan_aad",
    "scan_digest",
    "scan_row",
    "seal_audit_reason",
    "seal_clear_audit_reasons",
    "seal_dead_letter",
    "seal_identity",
    "to_format_params",
]

VIETNAM_OFFSET_MS = 7 * 3600 * 1000
"""Vietnam is UTC+7 all year (no daylight saving): a report's day starts at 17:00 UTC."""
DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)


class SqlCursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class SqlConnection(Protocol):
    """``execute`` with ``?`` placeholders: a `sqlite3.Connection`, or the PostgreSQL adapter."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> SqlCursor: ...


@lru_cache(maxsize=256)
def to_format_params(sql: str) -> str:
    """The shared SQL with psycopg's placeholders: ``?`` -> ``%s``, a literal ``%`` doubled.

    Safe because no shared statement has a ``?`` inside a string literal.
    """
    return sql.replace("%", "%%").replace("?", "%s")


def day_start_ms(day: date) -> int:
    """The first millisecond of `day` in Vietnam time."""
    return (day - _EPOCH).days * DAY_MS - VIETNAM_OFFSET_MS


def day_of_number(number: int) -> date:
    """The Vietnam date of a day number, ``(ms + VIETNAM_OFFSET_MS) // DAY_MS``."""
    return _EPOCH + timedelta(days=number)


# -- sealing and pseudonyms ------------------------------------------------------------------


def scan_aad(scan_id: str) -> bytes:
    """Binds a scan's sealed identity to its row: moved to another row, it does not open."""
    return b"scan:" + scan_id.encode("utf-8")


def dead_letter_aad(letter_id: int) -> bytes:
    return b"dead-letter:%d" % letter_id


def identity_fields(who: Identity) -> dict[str, Any]:
    """The identity as it is sealed (JSON keys are part of the stored format)."""
    return {
        "person_key": who.person_key,
        "kind": who.kind,
        "id_number": who.id_number,
        "name": who.name,
        "birth_date": who.birth_date,
        "sex": who.sex,
        "address": who.address,
    }


_IDENTITY_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True)
"""Made once: json.dumps with options makes a new encoder at each of a batch's scans."""


def seal_identity(vault: Vault, scan_id: str, identity: dict[str, Any]) -> bytes:
    plain = _IDENTITY_JSON.encode(identity).encode("utf-8")
    return vault.seal(plain, scan_aad(scan_id))


def seal_dead_letter(vault: Vault, letter_id: int, payload: bytes, reason: str) -> bytes:
    # The reason is sealed with the payload: some refusal reasons quote a field of the
    # refused code (a birth date, a province code), and a payload may be a clear QR text.
    envelope = {"payload": base64.b64encode(payload).decode("ascii"), "reason": reason}
    return vault.seal(json.dumps(envelope).encode("utf-8"), dead_letter_aad(letter_id))


SEALED_REASON_PREFIX = "sealed1:"
_REASON_AAD = b"doorscan audit reason v1"


def seal_audit_reason(vault: Vault, reason: str) -> str:
    """The reason as the audit table keeps it: encrypted, as text (the chain hashes it).

    Tracers type a case's name and ID number into the reason, so it is an identity like
    the scans' and is kept the same way; `open_audit_reason` gives it back. The entry's
    hash covers the sealed text, so the chain can be checked without the vault key.
    """
    sealed = vault.seal(reason.encode("utf-8"), _REASON_AAD)
    return SEALED_REASON_PREFIX + base64.b64encode(sealed).decode("ascii")


def open_audit_reason(vault: Vault, stored: str) -> str:
    """The clear reason of a stored entry; `SealedDataError` if it does not open."""
    if not stored.startswith(SEALED_REASON_PREFIX):
        return stored  # written by a migration's own entry, which holds no identity
    blob = base64.b64decode(stored[len(SEALED_REASON_PREFIX) :])
    return vault.open(blob, _REASON_AAD).decode("utf-8")


def name_key(vault: Vault, name: str) -> str | None:
    """The keyed hash a scan's name is found by (``scans.name_key``); None for no name.

    The name is folded first (`hub.namefold`: no diacritics, no case), so "nguyen van
    an" finds "Nguyễn Văn An". The ``name:`` domain prefix keeps it apart from a person
    key's pseudonym, which is the same keyed hash of ``id:...`` or ``card:...``: the two
    can never be equal, so a name can never be taken for a person or the reverse.
    """
    folded = fold(name)
    return vault.blind("name:" + folded) if folded else None


SCAN_COLUMNS = (
    "scan_id, unit_id, venue_id, scanned_at_ms, clock_trusted, person_key, kind, identity, "
    "source, received_at_ms, name_key"
)
"""The columns `scan_row` fills, in its order; both backends' ``scans`` have them."""


def scan_row(vault: Vault, scan: StoredScan, received_ms: int) -> tuple[Any, ...]:
    """A scan as stored: the person only as its pseudonym, the identity sealed to the row,
    the name only as its keyed folded hash for search (`name_key`)."""
    who = scan.identity
    return (
        scan.scan_id,
        scan.unit_id,
        scan.venue_id,
        to_ms(scan.scanned_at),
        scan.clock_trusted,
        vault.blind(who.person_key),
        who.kind,
        seal_identity(vault, scan.scan_id, identity_fields(who)),
        scan.source,
        received_ms,
        name_key(vault, who.name),
    )


def scan_digest(vault: Vault, scan: StoredScan) -> str | None:
    """The keyed digest of the scan as its unit sent it, or None (a CSV row: no basis).

    The unit id is part of it: the same bytes from another unit are another scan.
    """
    if scan.digest_basis is None:
        return None
    return vault.content_digest((scan.unit_id or "").encode("utf-8") + b"\x1f" + scan.digest_basis)


# -- the audit chain -------------------------------------------------------------------------

AUDIT_INSERT = (
    "INSERT INTO audit (at_ms, action, reason, params_json, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, '') RETURNING id"
)
"""The entry's id comes from the table (SQLite's AUTOINCREMENT); see `append_audit`."""


def append_audit(
    conn: SqlConnection,
    action: str,
    reason: str,
    params: dict[str, Any],
    at: datetime,
    *,
    insert_sql: str = AUDIT_INSERT,
) -> int:
    """Append one entry and move the head; the caller holds the write transaction.

    The head row is updated first, so that on PostgreSQL its row lock makes a second
    appender wait here rather than chain from the same entry (SQLite's write lock
    already does). `insert_sql` takes the same parameters as `AUDIT_INSERT` and
    returns the new id; PostgreSQL's numbers entries without a sequence (a sequence
    leaves a gap on rollback, which `verify_audit` would take for a deleted entry).
    """
    head = conn.execute(
        "UPDATE audit_head SET entries = entries + 1 WHERE one_row = 1 RETURNING last_hash"
    ).fetchall()
    if not head:
        raise StoreError("the audit_head row is missing; run `audit verify`")
    prev_hash = str(head[0][0])
    at_ms = to_ms(at)
    params_json = json.dumps(params, ensure_ascii=False, sort_keys=True)
    # fetchall: a RETURNING statement is finished (and its cursor done) before the next.
    ((entry_id,),) = conn.execute(
        insert_sql, (at_ms, action, reason, params_json, prev_hash)
    ).fetchall()
    digest = entry_hash(int(entry_id), at_ms, action, reason, params_json, prev_hash)
    conn.execute("UPDATE audit SET hash = ? WHERE id = ?", (digest, entry_id))
    conn.execute(
        "UPDATE audit_head SET last_id = ?, last_hash = ? WHERE one_row = 1", (entry_id, digest)
    )
    return int(entry_id)


_MIGRATION_ACTIONS = ("vault-migration", "audit-migration")
"""Entries a migration writes itself: their reasons are the hub's words, not a tracer's."""


def seal_clear_audit_reasons(
    conn: SqlConnection, vault: Vault, now: datetime, insert_sql: str = AUDIT_INSERT
) -> None:
    """Encrypt the reasons of entries written before reasons were sealed (a migration).

    This edits entries of the hash chain, so the chain is hashed again from the first
    entry and an ``audit-migration`` entry records the head hash from before: whoever
    noted that hash (or holds an anchor of it) sees that the hub itself rewrote the
    chain, and when. A database with no clear reason keeps its chain untouched.
    """
    rewritten = 0
    for entry_id, action, reason in conn.execute(
        "SELECT id, action, reason FROM audit ORDER BY id"
    ).fetchall():
        if action in _MIGRATION_ACTIONS or str(reason).startswith(SEALED_REASON_PREFIX):
            continue
        conn.execute(
            "UPDATE audit SET reason = ? WHERE id = ?",
            (seal_audit_reason(vault, str(reason)), entry_id),
        )
        rewritten += 1
    if not rewritten:
        return
    (previous_head,) = conn.execute("SELECT last_hash FROM audit_head WHERE one_row = 1").fetchone()
    prev_hash, last_id, count = GENESIS_HASH, None, 0
    for id_, at_ms, action, reason, params_json in conn.execute(
        "SELECT id, at_ms, action, reason, params_json FROM audit ORDER BY id"
    ).fetchall():
        digest = entry_hash(id_, at_ms, action, reason, params_json, prev_hash)
        conn.execute(
            "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev_hash, digest, id_)
        )
        prev_hash, last_id, count = digest, id_, count + 1
    conn.execute(
        "UPDATE audit_head SET last_id = ?, last_hash = ?, entries = ? WHERE one_row = 1",
        (last_id, prev_hash, count),
    )
    append_audit(
        conn,
        "audit-migration",
        "audit reasons sealed at rest: entries hashed again",
        {"previous_head": previous_head, "entries_rewritten": rewritten},
        now,
        insert_sql=insert_sql,
    )
