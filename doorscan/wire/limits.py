"""Every limit of the wire contract, and the hub's judging rules, in one place.

`LIMITS` is the table `docs/wire.md` prints (a test renders it again and compares), so
a limit changed here and not there fails the suite. The broker's own limits
(`provisioning broker-files`) and the hub's (`hub.ingest`) are taken from these.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

__all__ = [
    "BROKER_MAX_INFLIGHT",
    "BROKER_MAX_PACKET_BYTES",
    "DEAD_LETTER_PREFIX_BYTES",
    "EARLIEST_SCAN",
    "FUTURE_TOLERANCE_S",
    "LIMITS",
    "Limit",
    "MAX_BATCH_SCANS",
    "MAX_DELIVERY_ATTEMPTS",
    "MAX_MESSAGE_BYTES",
    "MAX_QR_CHARS",
    "MAX_REASON_CHARS",
    "MAX_SEALED_CHARS",
    "MAX_WIRE_INT",
    "RATE_MAX_SCANS",
    "RATE_WINDOW_S",
    "DRAIN_SLACK_S",
    "render_limits",
]

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_BATCH_SCANS = 500
MAX_QR_CHARS = 1024
# A sealed QR text (doorscan.sealing): base64url of up to 4 UTF-8 bytes a character + 49.
MAX_SEALED_CHARS = ((MAX_QR_CHARS * 4 + 49) * 4 + 2) // 3
MAX_REASON_CHARS = 300
MAX_WIRE_INT = 2**53 - 1
"""The largest integer every JSON reader holds exactly (RFC 7493, I-JSON)."""
BROKER_MAX_PACKET_BYTES = MAX_MESSAGE_BYTES + 64 * 1024
"""What the broker takes in one MQTT packet: a whole message plus its topic and headers."""
BROKER_MAX_INFLIGHT = 100
"""QoS 1 messages the broker sends one client before it must wait for PUBACKs
(``max_inflight_messages``; Mosquitto's default is 20). The hub settles what arrives
together with one commit, so this window is also the largest group it can form."""
DEAD_LETTER_PREFIX_BYTES = 4096
"""Of a payload over `MAX_MESSAGE_BYTES`, the hub keeps this much, its SHA-256 and length."""
MAX_DELIVERY_ATTEMPTS = 5
"""A message whose storing failed this many times while the store took others is poison."""
FUTURE_TOLERANCE_S = 300
EARLIEST_SCAN = datetime(2020, 1, 1, tzinfo=UTC)
RATE_WINDOW_S = 60
RATE_MAX_SCANS = 60
"""At most this many scans of one unit in any `RATE_WINDOW_S` of claimed scan times."""
DRAIN_SLACK_S = 300
"""How far before its last "backlog: 0" a unit's new scan may be dated (clock steps)."""


class Limit(NamedTuple):
    what: str
    value: str
    enforced_by: str


LIMITS: tuple[Limit, ...] = (
    Limit("message size (payload)", f"{MAX_MESSAGE_BYTES:,} bytes", "writer; hub: `too_large`"),
    Limit(
        "MQTT packet (payload, topic, headers)",
        f"{BROKER_MAX_PACKET_BYTES:,} bytes",
        "broker (`max_packet_size`, `message_size_limit`)",
    ),
    Limit(
        "QoS 1 messages in flight to one client",
        f"{BROKER_MAX_INFLIGHT}",
        "broker (`max_inflight_messages`)",
    ),
    Limit("scans in a batch", f"1 to {MAX_BATCH_SCANS}", "hub: batch `too_many_scans`"),
    Limit("`qr_text`", f"1 to {MAX_QR_CHARS:,} characters", "hub: scan `schema`"),
    Limit("`sealed`", f"1 to {MAX_SEALED_CHARS:,} characters of base64url", "hub: scan `schema`"),
    Limit("unit and venue ids", "`[a-z0-9][a-z0-9_-]{0,62}`", "hub: `schema`"),
    Limit("scan and batch ids", "`[A-Za-z0-9_-]{8,64}`", "hub: `schema`"),
    Limit("`boot_id`", "`[0-9a-f]{8,32}`", "hub: `schema`"),
    Limit("refusal codes", "`[a-z][a-z0-9_]{0,39}`", "hub writes them"),
    Limit("reasons", f"at most {MAX_REASON_CHARS} characters", "both"),
    Limit(
        "integers (`mono_ms`, `backlog`, versions...)",
        f"0 to {MAX_WIRE_INT:,} (2^53 - 1)",
        "hub: `schema`",
    ),
    Limit("text", "no U+0000", "hub: `schema`"),
    Limit("JSON", "one object; no NaN or Infinity; strict types", "hub: `not_json`, `schema`"),
    Limit(
        "`scanned_at` ahead of the hub's clock",
        f"at most {FUTURE_TOLERANCE_S // 60} minutes",
        "hub: scan `future_time`",
    ),
    Limit(
        "`scanned_at`, earliest",
        EARLIEST_SCAN.strftime("%Y-%m-%d"),
        "hub: scan `implausible_time`",
    ),
    Limit(
        "scans of one unit in any minute of claimed time",
        f"{RATE_MAX_SCANS} per {RATE_WINDOW_S} s",
        "hub: held apart, `too_fast`",
    ),
    Limit(
        "scan dated before the unit's registration",
        "none",
        "hub: held apart, `before_registration`",
    ),
    Limit(
        'scan dated before the unit\'s last status with `"backlog": 0`',
        f"at most {DRAIN_SLACK_S // 60} minutes before",
        "hub: held apart, `before_drain`",
    ),
    Limit(
        "failed attempts to store one message",
        f"{MAX_DELIVERY_ATTEMPTS}, then dead-lettered `poison`",
        "hub",
    ),
    Limit(
        "oversize payload kept in a dead letter",
        f"first {DEAD_LETTER_PREFIX_BYTES:,} bytes, SHA-256 and length",
        "hub",
    ),
)


def render_limits() -> str:
    """The Markdown table of `LIMITS` that docs/wire.md carries."""
    lines = ["| limit | value | enforced by |", "|---|---|---|"]
    lines += [f"| {lim.what} | {lim.value} | {lim.enforced_by} |" for lim in LIMITS]
    return "\n".join(lines)
