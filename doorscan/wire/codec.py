"""Bytes in and out of the wire contract, and its revisions.

Reading is strict and never raises anything but `Refusal`: a payload is UTF-8 JSON,
one object, no NaN or Infinity, no integer the decoder cannot hold, ``"v": 1`` as the
integer 1 (not ``true``, not ``1.0``), and a ``rev`` this reader knows.

Revisions. Within major version 1, the contract grows only by optional fields and new
messages, each added in a numbered revision (`REVISIONS`). A reader of revision R
reads every message of revision R or older. Revisions 1 to 5 predate the ``rev``
field: a message without it holds no field added after revision 5. From revision 6 a
message that needs a newer field says so in ``rev`` (`encode_message` adds it), and a
reader refuses a ``rev`` above its own with the code ``unsupported_revision``, which
for a scan batch is an answer the unit can wait on, not a loss. How a unit and a hub
of different ages live together is in docs/wire.md, "Versions and revisions".

    >>> from datetime import UTC, datetime
    >>> from doorscan.wire import HubStatus
    >>> encode_message(HubStatus(online=True, revision=6))
    b'{"v":1,"rev":6,"schema":"doorscan.hub-status","online":true,"revision":6}'
    >>> decode_message(b'{"v":true,"schema":"doorscan.hub-status","online":true}', HubStatus)
    Traceback (most recent call last):
    ...
    doorscan.errors.Refusal: schema_version: "v" is true, not the integer 1
"""

from __future__ import annotations

import json
from datetime import date, datetime, time
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from doorscan.errors import Refusal
from doorscan.timefmt import format_rfc3339
from doorscan.wire.limits import MAX_MESSAGE_BYTES
from doorscan.wire.messages import (
    SCHEMA_VERSION,
    BatchRefusal,
    FleetKeys,
    HubStatus,
    UnitConfigUpdate,
)

__all__ = [
    "REVISIONS",
    "canonical_bytes",
    "REV_FIELD_SINCE",
    "WIRE_REVISION",
    "check_version",
    "decode_message",
    "encode_message",
    "load_json",
    "render_revisions",
    "revision_of",
    "written_for",
    "schema_refusal",
]

WIRE_REVISION = 10
"""The revision this code writes and reads (and every older one)."""
REV_FIELD_SINCE = 6
"""The first revision whose messages may carry ``rev``."""

REVISIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        "The first contract: `ScanBatch` of `Scan` with `qr_text`, `Ack`, `UnitStatus` "
        "(`online`, `at`, `software`, `backlog`, `last_scan_at`), `VenueRecord`, `UnitRecord`.",
    ),
    (
        2,
        "Units without a trusted clock: `Scan.boot_id`, `Scan.mono_ms`, "
        "`ScanBatch.boot_id`, `ScanBatch.sent_mono_ms`.",
    ),
    (3, "Sealed scans: `Scan.sealed` and `Scan.kind`; `qr_text` becomes optional."),
    (
        4,
        "Unit health in `UnitStatus`: `uptime_s`, `clock_trusted`, `cpu_temp_c`, "
        "`disk_free_mb`, `camera_ok`, `decode_rate_hz`.",
    ),
    (
        5,
        "Remote config: `UnitConfigUpdate` on `units/{unit}/config`; "
        "`UnitStatus.config_version` and `UnitStatus.config_error`.",
    ),
    (
        6,
        "Every message is settled: `rev` in every message; `RefusedScan.code` and "
        "`RefusedScan.retry`; `Ack.refusal` (`BatchRefusal`); `UnitStatus.quarantined` and "
        "`UnitStatus.config_refused_version`; `HubStatus` on `hub/status`; "
        "`UnitRecord.registered_at`.",
    ),
    (
        7,
        "Visitor cards expire and can be revoked: `CardRevocations` on "
        "`registry/cards/revoked`; refusal codes `card_expired` and `card_revoked`.",
    ),
    (
        8,
        "The fleet's public keys: `FleetKeys` on `registry/fleet/keys`, which the hub "
        "checks its own keys against before it starts.",
    ),
    (
        9,
        "Signed releases of the unit software: `UnitConfigUpdate.software`, the release "
        "the hub wants a unit to run (`hub fleet-update`).",
    ),
    (
        10,
        "Units update themselves: `UnitStatus.update_version`, `UnitStatus.update_state` "
        "and `UnitStatus.update_error`.",
    ),
)


def render_revisions() -> str:
    """The Markdown table of `REVISIONS` that docs/wire.md carries."""
    lines = ["| revision | what it added |", "|---|---|"]
    lines += [f"| {number} | {text} |" for number, text in REVISIONS]
    return "\n".join(lines)


# Messages added after revision 1 as a whole (their fields carry no `since` of their own).
_MESSAGE_SINCE: dict[type[BaseModel], int] = {
    UnitConfigUpdate: 5,
    HubStatus: 6,
    BatchRefusal: 6,
    FleetKeys: 8,
}

M = TypeVar("M", bound=BaseModel)


def _since(field: FieldInfo) -> int | None:
    """The revision a field was added in (its ``since``), None for one of revision 1."""
    extra = field.json_schema_extra
    added = extra.get("since") if isinstance(extra, dict) else None
    return added if isinstance(added, int) else None


def revision_of(message: BaseModel) -> int:
    """The lowest revision that has every field `message` sets (nested messages too)."""
    revision = _MESSAGE_SINCE.get(type(message), 1)
    for name, field in type(message).model_fields.items():
        value = getattr(message, name)
        if value is None or name == "rev":
            continue
        if (added := _since(field)) is not None:
            revision = max(revision, added)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                revision = max(revision, revision_of(item))
    return revision


def written_for(message: M, revision: int) -> M:
    """`message` without the fields a reader of `revision` does not know (they are optional).

    For a writer that cannot know its reader's revision in advance (a unit's status, read
    by a hub that may be older): what the reader would refuse is left out.
    """
    newer = {
        name
        for name, field in type(message).model_fields.items()
        if (added := _since(field)) is not None and added > revision
    }
    return message.model_copy(update=dict.fromkeys(newer)) if newer else message


def canonical_bytes(message: BaseModel) -> bytes:
    """The message as `encode_message` writes its fields, whatever ``rev`` it declares.

    For what the hub keys on a message's content (a scan's digest): it must not refuse a
    message the reader took, as `encode_message` refuses one that declares too low a rev.
    """
    return _dumps(message.model_dump(by_alias=True, exclude_none=True))


def encode_message(message: BaseModel) -> bytes:
    """Serialise a message to compact UTF-8 JSON, the only encoding on the wire.

    Optional fields that are not set are left out (a reader takes their default), and
    ``rev`` is added when the message needs a field of revision 6 or newer, so a
    message an older reader can read is written the way it reads it.
    """
    needed = revision_of(message)
    declared = getattr(message, "rev", None)
    if declared is not None and declared < needed:
        raise ValueError(f"{type(message).__name__} says rev {declared} but needs {needed}")
    data = message.model_dump(by_alias=True, exclude_none=True)
    if declared is None and needed >= REV_FIELD_SINCE:
        data = {"v": data.pop("v"), "rev": needed, **data}
    payload = _dumps(data)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Refusal("too_large", f"message of {len(payload)} bytes is over {MAX_MESSAGE_BYTES}")
    return payload


def _dumps(data: dict[str, Any]) -> bytes:
    # A python-mode dump, its few non-JSON values written by `_wire_value` as the C
    # encoder meets them: one pass, where a JSON-mode dump and a walk to rewrite its
    # times took a scan's digest basis twice as long. One encoder, made once: json.dumps
    # with options builds a new one at every call.
    return _ENCODER.encode(data).encode("utf-8")


def _wire_value(value: Any) -> str:
    # pydantic would write "+00:00"; the contract says RFC 3339 with "Z" and milliseconds.
    if isinstance(value, datetime):
        return format_rfc3339(value)
    if isinstance(value, date | time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a wire value")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_wire_value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(payload: bytes) -> tuple[str, dict[str, Any]]:
    """The payload's text and its object; `Refusal` for anything that is not one."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Refusal("too_large", f"message of {len(payload)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refusal("not_utf8", f"message is not UTF-8 (byte {exc.start})") from None
    try:
        # ValueError covers more than malformed JSON: an integer of over 4,300 digits
        # (Python's int_max_str_digits) and NaN or Infinity (refused by _no_constant).
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Refusal("not_json", f"message is not JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise Refusal("not_object", "message is not a JSON object")
    return text, data


def check_version(data: dict[str, Any]) -> int | None:
    """Refuse a message of another major version or of a revision newer than ours.

    Returns its ``rev`` (None: revision 5 or older). `Refusal` codes: ``schema_version``,
    ``unsupported_revision``, ``schema`` (a ``rev`` that is not a whole number).
    """
    version = data.get("v")
    # `is` and `type`: True == 1 and 1.0 == 1 in Python, and neither is the version 1.
    if type(version) is not int or version != SCHEMA_VERSION:
        shown = json.dumps(version)[:20] if "v" in data else "missing"
        raise Refusal("schema_version", f'"v" is {shown}, not the integer {SCHEMA_VERSION}')
    rev = data.get("rev")
    if rev is None:  # absent, or null as for any optional field
        return None
    if type(rev) is not int or rev < 1:
        raise Refusal("schema", f'"rev" is {json.dumps(rev)[:20]}, not a revision number')
    if rev > WIRE_REVISION:
        raise Refusal(
            "unsupported_revision",
            f"revision {rev} is newer than this reader's {WIRE_REVISION}",
        )
    return rev


def schema_refusal(exc: ValidationError, prefix: str = "") -> Refusal:
    """The first problem pydantic found, as a `Refusal` with code ``schema``.

    pydantic's messages name the rule, never the value, so no identity leaks here.
    """
    first = exc.errors()[0]
    where = ".".join((prefix, *(str(p) for p in first["loc"]))).strip(".") or "message"
    return Refusal("schema", f"{where}: {first['msg']}"[:300])


def decode_message(payload: bytes, model: type[M]) -> M:
    """Parse and validate one message; raise `Refusal` with a short reason on any fault."""
    text, data = load_json(payload)
    check_version(data)
    try:
        # Strict: "12" is not a number and 1 is not true. JSON mode still reads RFC 3339 times.
        return model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise schema_refusal(exc) from None
