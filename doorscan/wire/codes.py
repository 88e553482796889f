"""Every refusal code the hub writes, where it applies, and whether to try again.

A code names the rule a message, a batch or a scan broke; it travels in an `Ack`
(`RefusedScan.code`, `BatchRefusal.code`) and is kept with each dead letter. A reader
must treat a code it does not know by its ``retry`` flag alone: new codes may come in
later revisions. docs/wire.md prints `REFUSAL_CODES` (a test renders it again and
compares); the QR parsers' own codes (``cccd_number``, ``birth_date_invalid``...) are
scan refusals too, listed in doorscan/payloads.py.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["REFUSAL_CODES", "RefusalCode", "render_codes", "retry_codes"]

Level = Literal["message", "batch", "scan", "hold"]


class RefusalCode(NamedTuple):
    code: str
    level: Level  # message: kept, not answered; batch/scan: answered; hold: stored apart
    retry: bool  # true: not now (the unit keeps it and sends it again later), never kept
    meaning: str


REFUSAL_CODES: tuple[RefusalCode, ...] = (
    RefusalCode("too_large", "message", False, "payload over the size limit"),
    RefusalCode("not_utf8", "message", False, "payload is not UTF-8"),
    RefusalCode(
        "not_json", "message", False, "not JSON, or NaN/Infinity, or an integer too long to read"
    ),
    RefusalCode("not_object", "message", False, "JSON, but not an object"),
    RefusalCode("schema_version", "message", False, '`"v"` is not the integer 1'),
    RefusalCode("unknown_topic", "message", False, "a topic outside the contract"),
    RefusalCode(
        "id_mismatch", "message", False, "a record or status names another id than its topic"
    ),
    RefusalCode("internal_error", "message", False, "the hub failed on it (a bug); kept, logged"),
    RefusalCode(
        "poison", "batch", False, "storing it failed again and again while others were stored"
    ),
    RefusalCode("schema", "batch", False, "does not validate (also: a scan, a message)"),
    RefusalCode("unsupported_revision", "batch", True, "`rev` newer than the hub reads"),
    RefusalCode("unit_mismatch", "batch", False, "`unit_id` is not the unit of the topic"),
    RefusalCode("too_many_scans", "batch", False, "more scans than a batch may hold"),
    RefusalCode("retained", "batch", False, "published retained (the hub clears it)"),
    RefusalCode("not_qos1", "batch", False, "published at QoS 0"),
    RefusalCode("batch_conflict", "batch", False, "a `batch_id` seen before with other scans"),
    RefusalCode("replayed_batch", "message", False, "the same batch again: answered, and noted"),
    RefusalCode("duplicate_in_batch", "scan", False, "the batch names this `scan_id` twice"),
    RefusalCode(
        "scan_id_conflict", "scan", False, "the `scan_id` was stored before with other content"
    ),
    RefusalCode("unknown_unit", "scan", True, "the unit is not in the hub's registry (yet)"),
    RefusalCode("revoked_unit", "scan", False, "the unit is revoked"),
    RefusalCode("unknown_venue", "scan", True, "the venue is not in the hub's registry (yet)"),
    RefusalCode("venue_mismatch", "scan", False, "the venue is not the unit's"),
    RefusalCode("future_time", "scan", False, "`scanned_at` too far ahead of the hub's clock"),
    RefusalCode("implausible_time", "scan", False, "`scanned_at` before 2020"),
    RefusalCode("no_seal_key", "scan", True, "sealed, and the hub has no sealing key (yet)"),
    RefusalCode("unsealable", "scan", False, "sealed text that does not open"),
    RefusalCode("card_no_key", "scan", True, "a visitor card, and the hub has no card key (yet)"),
    RefusalCode("card_expired", "scan", False, "a visitor card past its expiry date"),
    RefusalCode("card_revoked", "scan", False, "a visitor card revoked before the scan's day"),
    RefusalCode("kind_mismatch", "scan", False, "`kind` is not the kind of the code"),
    RefusalCode("before_registration", "hold", False, "dated before the unit was registered"),
    RefusalCode(
        "before_drain", "hold", False, "dated before the unit last said it had sent everything"
    ),
    RefusalCode("too_fast", "hold", False, "more scans in a minute than a door lets through"),
)


def retry_codes() -> frozenset[str]:
    """The codes that mean "not now": the unit keeps the scan and sends it again."""
    return frozenset(c.code for c in REFUSAL_CODES if c.retry)


def render_codes() -> str:
    """The Markdown table of `REFUSAL_CODES` that docs/wire.md carries."""
    lines = ["| code | applies to | retry | meaning |", "|---|---|---|---|"]
    lines += [
        f"| `{c.code}` | {c.level} | {'yes' if c.retry else 'no'} | {c.meaning} |"
        for c in REFUSAL_CODES
    ]
    return "\n".join(lines)
