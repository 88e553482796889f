"""The audit log's hash chain: the canonical encoding of an entry and the check of a chain.

Every read of identities (a trace, a visitor list) and every purge is an audit entry.
Each entry carries ``prev_hash``, the hash of the entry before it (`GENESIS_HASH` for
the first), and ``hash``, the SHA-256 of its own canonical encoding (`entry_hash`),
which covers ``prev_hash``. So editing, deleting or reordering an entry changes a
hash that a later entry, or the entry itself, no longer matches:

    >>> h1 = entry_hash(1, 1629000000000, "trace", "F0 case 12", "{}", GENESIS_HASH)
    >>> rows = [AuditRow(1, 1629000000000, "trace", "F0 case 12", "{}", GENESIS_HASH, h1)]
    >>> verify_chain(rows, AuditHead(last_id=1, last_hash=h1, entries=1)).ok
    True

What a chain cannot see, and what covers it:

- **A truncated tail.** Deleting the newest entries leaves a shorter chain that is
  still perfectly linked. The store therefore keeps the latest id, hash and count in a
  separate one-row table (``audit_head``), updated in the same transaction as each
  insert; `verify_chain` compares the chain's end with it.
- **A rewrite by someone who can write the file.** The hash is not keyed: whoever
  can edit the database can recompute every hash and the head. The chain makes
  tampering *evident* to anyone who noted an earlier head (``audit verify`` prints
  it), not impossible. Copying the head hash somewhere the hub cannot write (a
  ticket, a second machine) turns every later rewrite of earlier entries into a
  detectable one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "GENESIS_HASH",
    "AuditHead",
    "AuditRow",
    "AuditVerification",
    "entry_hash",
    "verify_chain",
]

# The first entry's prev_hash: a fixed, documented value, so a verifier needs nothing else.
GENESIS_HASH = hashlib.sha256(b"doorscan audit log genesis v1").hexdigest()

_DOMAIN = "doorscan-audit-v1"


class AuditRow(NamedTuple):
    """One stored audit entry, as the chain check reads it (columns of the ``audit`` table)."""

    id: int
    at_ms: int
    action: str
    reason: str
    params_json: str
    prev_hash: str
    hash: str


class AuditHead(NamedTuple):
    """The latest entry as recorded beside the chain (``audit_head``); catches truncation."""

    last_id: int | None
    last_hash: str
    entries: int


@dataclass(frozen=True)
class AuditVerification:
    """The result of checking the audit log.

    `entries` is how many entries checked good (all of them when `ok`); `first_bad_id`
    is where the log first breaks and `problem` says how; `head_hash` is the hash of
    the last good entry, worth noting outside the hub (see the module docstring).
    """

    ok: bool
    entries: int
    first_bad_id: int | None = None
    problem: str | None = None
    head_hash: str = GENESIS_HASH


def entry_hash(
    id: int,
    at_ms: int,
    action: str,
    reason: str,
    params_json: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical encoding of one entry.

    The encoding is a JSON array with a version tag, so field boundaries cannot be
    shifted (``"a" + "bc"`` and ``"ab" + "c"`` encode differently) and any other
    language can reproduce it: ``["doorscan-audit-v1",id,at_ms,action,reason,
    params_json,prev_hash]``, no spaces, non-ASCII kept as UTF-8.
    """
    if isinstance(id, bool) or isinstance(at_ms, bool):
        raise TypeError("id and at_ms are integers")
    encoded = json.dumps(
        [_DOMAIN, int(id), int(at_ms), action, reason, params_json, prev_hash],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def verify_chain(rows: Iterable[AuditRow], head: AuditHead | None) -> AuditVerification:
    """Check rows given in id order against each other and against `head`.

    Per entry, in this order: its id follows the previous one (a gap is a deleted
    entry; ids start at 1), its ``prev_hash`` is the previous entry's hash, and its
    ``hash`` matches its contents. The first failure is reported with the id of the
    entry where it shows (for a deleted entry, the one after the gap). After the last
    entry, the head must name that entry, its hash and the count.
    """
    count = 0
    prev_id = 0
    prev_hash = GENESIS_HASH
    for row in rows:
        if row.id != prev_id + 1:
            missing = f"{prev_id + 1}" if row.id == prev_id + 2 else f"{prev_id + 1}..{row.id - 1}"
            return _bad(count, row.id, f"entry {missing} is missing (deleted?)", prev_hash)
        if row.prev_hash != prev_hash:
            before = "the genesis value" if prev_id == 0 else f"the hash of entry {prev_id}"
            return _bad(count, row.id, f"its prev_hash is not {before} (reordered?)", prev_hash)
        recomputed = entry_hash(
            row.id, row.at_ms, row.action, row.reason, row.params_json, row.prev_hash
        )
        if recomputed != row.hash:
            return _bad(count, row.id, "its contents do not match its hash (edited)", prev_hash)
        count += 1
        prev_id, prev_hash = row.id, row.hash
    if head is None:
        return _bad(count, None, "the audit_head row is missing", prev_hash)
    if head.entries > count or (head.last_id or 0) > prev_id:
        return _bad(
            count,
            prev_id + 1,
            f"the log ends at entry {prev_id or 'none'} but audit_head records "
            f"{head.entries} entries up to {head.last_id}: the newest entries were deleted",
            prev_hash,
        )
    if (head.last_id, head.last_hash, head.entries) != (prev_id or None, prev_hash, count):
        return _bad(
            count,
            prev_id or None,
            f"audit_head ({head.entries} entries up to {head.last_id}) does not match "
            f"the log ({count} entries up to {prev_id or 'none'})",
            prev_hash,
        )
    return AuditVerification(True, count, head_hash=prev_hash)


def _bad(entries: int, first_bad_id: int | None, problem: str, head: str) -> AuditVerification:
    return AuditVerification(False, entries, first_bad_id, problem, head_hash=head)
