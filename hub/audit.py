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
  can edit the database can recompute every hash and the head. So the head is
  *anchored*: ``doorscan-hub audit anchor`` (a systemd timer, every 15 minutes) signs
  it with the hub's Ed25519 audit key (`Anchor`), appends it to an anchors file meant
  to be shipped off the box, and prints it to the journal. ``audit verify --anchors``
  then fails when an anchored entry is gone or has another hash (`check_anchors`):
  truncation plus re-hashing, which the chain alone cannot see.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "GENESIS_HASH",
    "Anchor",
    "AnchorKeys",
    "AnchorSigner",
    "check_anchors",
    "make_anchor",
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


# -- anchors: the head, signed and copied where the database's owner cannot rewrite it -------

ANCHOR_DOMAIN = b"doorscan-audit-anchor-v1\n"


@dataclass(frozen=True)
class Anchor:
    """The chain's head at one moment, signed with the hub's Ed25519 audit key.

    One JSON object per line in an anchors file (`to_line`, `from_line`). Anyone who can
    write the database can rewrite the chain and its head; nobody can make an entry
    that an anchor copied elsewhere names disappear or change its hash, so
    `check_anchors` catches a truncated tail and a chain hashed again up to the newest
    anchor. Entries written after the newest anchor are covered only by the next one.
    """

    entries: int
    last_id: int | None
    head_hash: str
    at: str  # RFC 3339, when the anchor was taken
    key_id: str
    signature: str = ""  # base64 of the Ed25519 signature over `signed_bytes`

    def signed_bytes(self) -> bytes:
        body = [self.entries, self.last_id, self.head_hash, self.at, self.key_id]
        return ANCHOR_DOMAIN + json.dumps(body, separators=(",", ":")).encode("ascii")

    def to_line(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "entries": self.entries,
                "last_id": self.last_id,
                "head_hash": self.head_hash,
                "at": self.at,
                "key_id": self.key_id,
                "signature": self.signature,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_line(cls, line: str) -> Anchor:
        """One line of an anchors file; `ValueError` if it is not one."""
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not an audit anchor of version 1")
        try:
            return cls(
                entries=int(data["entries"]),
                last_id=None if data["last_id"] is None else int(data["last_id"]),
                head_hash=str(data["head_hash"]),
                at=str(data["at"]),
                key_id=str(data["key_id"]),
                signature=str(data["signature"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"an audit anchor without {exc}") from None


class AnchorSigner(Protocol):
    key_id: str

    def sign(self, body: bytes) -> bytes: ...


class AnchorKeys(Protocol):
    def get(self, key_id: str) -> Ed25519PublicKey | None: ...


def make_anchor(
    check: AuditVerification, last_id: int | None, at: str, signer: AnchorSigner
) -> Anchor:
    """Sign the head of a chain that `verify_chain` found intact."""
    if not check.ok:
        raise ValueError("the audit log is broken: an anchor would vouch for it")
    unsigned = Anchor(check.entries, last_id, check.head_hash, at, signer.key_id)
    signature = base64.b64encode(signer.sign(unsigned.signed_bytes())).decode("ascii")
    return Anchor(check.entries, last_id, check.head_hash, at, signer.key_id, signature)


def check_anchors(
    anchors: Iterable[Anchor],
    keys: AnchorKeys,
    entries: int,
    hash_at: Callable[[int], str | None],
) -> str | None:
    """The first problem of the chain against `anchors`, or None when every one holds.

    Each anchor must carry a good signature of a trusted key; the chain must have at
    least as many entries as it names, and its entry ``last_id`` must have the hash it
    names (`hash_at` reads one entry's stored hash; the chain itself was checked).
    """
    for number, anchor in enumerate(anchors, start=1):
        key = keys.get(anchor.key_id)
        if key is None:
            return f"anchor {number} ({anchor.at}) is signed by unknown key {anchor.key_id}"
        try:
            key.verify(base64.b64decode(anchor.signature), anchor.signed_bytes())
        except (InvalidSignature, ValueError):
            return f"anchor {number} ({anchor.at}) has a bad signature"
        if entries < anchor.entries:
            return (
                f"anchor {number} ({anchor.at}) saw {anchor.entries} entries; the log has "
                f"{entries}: entries were deleted"
            )
        if anchor.last_id is not None and hash_at(anchor.last_id) != anchor.head_hash:
            return (
                f"entry {anchor.last_id} no longer has the hash anchor {number} ({anchor.at}) "
                "recorded: the log was rewritten"
            )
    return None
