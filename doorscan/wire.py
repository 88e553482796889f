"""The wire contract: every MQTT topic and message schema doorscan uses.

This is the one module that the door unit, the hub and provisioning all import;
`docs/wire.md` documents it with an example of each message. Change a schema
here and the version number with it.

Topics (``{unit}`` and ``{venue}`` are ids matching `ID_PATTERN`)::

    doorscan/v1/units/{unit}/scans       unit -> hub     QoS 1               ScanBatch
    doorscan/v1/units/{unit}/ack         hub -> unit     QoS 1               Ack
    doorscan/v1/units/{unit}/status      unit -> all     QoS 1, retained     UnitStatus (+ will)
    doorscan/v1/units/{unit}/config      hub -> unit     QoS 1, retained     UnitConfigUpdate
    doorscan/v1/registry/venues/{venue}  provisioning    QoS 1, retained     VenueRecord
    doorscan/v1/registry/units/{unit}    provisioning    QoS 1, retained     UnitRecord

Delivery: a unit keeps every scan in its journal until an `Ack` names it; the hub
sends that ack only after its own commit. A broker PUBACK is not enough, because
the broker may hold the message only in memory.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, time, timedelta, timezone
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from doorscan.errors import Refusal
from doorscan.timefmt import format_rfc3339, parse_rfc3339

__all__ = [
    "ID_PATTERN",
    "MAX_BATCH_SCANS",
    "MAX_MESSAGE_BYTES",
    "MAX_QR_CHARS",
    "MAX_SEALED_CHARS",
    "SCHEMA_VERSION",
    "TOPIC_ROOT",
    "Ack",
    "RefusedScan",
    "Scan",
    "ScanBatch",
    "CONFIG_SETTINGS",
    "QUIET_HOURS_TZ",
    "UnitConfigUpdate",
    "UnitRecord",
    "UnitStatus",
    "VenueRecord",
    "decode_message",
    "encode_message",
    "topic_ack",
    "topic_config",
    "parse_quiet_hours",
    "topic_scans",
    "topic_status",
    "topic_registry_unit",
    "topic_registry_venue",
    "parse_topic",
    "SUB_ALL_SCANS",
    "SUB_REGISTRY",
    "SUB_ALL_STATUS",
]

SCHEMA_VERSION = 1
TOPIC_ROOT = "doorscan/v1"
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_BATCH_SCANS = 500
MAX_QR_CHARS = 1024
# A sealed QR text (doorscan.sealing): base64url of up to 4 UTF-8 bytes a character + 49.
MAX_SEALED_CHARS = ((MAX_QR_CHARS * 4 + 49) * 4 + 2) // 3
ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
_ID_RE = re.compile(ID_PATTERN)

# The wire never carries a name of anything that could break a topic (`+`, `#`, `/`).
EntityId = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$")]
ScanId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
BootId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8,32}$")]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a UTC offset")
    return parse_rfc3339(value.isoformat())


UtcTime = Annotated[datetime, AfterValidator(_utc)]


class _Message(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, str_max_length=MAX_QR_CHARS
    )

    v: Literal[1] = Field(1, description="schema version; a message of another version is refused")


def _topic(*parts: str) -> str:
    for part in parts:
        if not _ID_RE.fullmatch(part):
            raise ValueError(f"{part!r} is not a valid id for a topic")
    return "/".join((TOPIC_ROOT, *parts))


def topic_scans(unit_id: str) -> str:
    return _topic("units", unit_id) + "/scans"


def topic_ack(unit_id: str) -> str:
    return _topic("units", unit_id) + "/ack"


def topic_status(unit_id: str) -> str:
    return _topic("units", unit_id) + "/status"


def topic_config(unit_id: str) -> str:
    """The unit's retained remote config; only the hub may write it (broker ACL)."""
    return _topic("units", unit_id) + "/config"


def topic_registry_venue(venue_id: str) -> str:
    return f"{TOPIC_ROOT}/registry/venues/{_topic(venue_id).rsplit('/', 1)[1]}"


def topic_registry_unit(unit_id: str) -> str:
    return f"{TOPIC_ROOT}/registry/units/{_topic(unit_id).rsplit('/', 1)[1]}"


SUB_ALL_SCANS = f"{TOPIC_ROOT}/units/+/scans"
SUB_ALL_STATUS = f"{TOPIC_ROOT}/units/+/status"
SUB_REGISTRY = f"{TOPIC_ROOT}/registry/#"


def parse_topic(topic: str) -> tuple[str, str]:
    """Split a doorscan topic into (kind, entity id): ("scans", "u1"), ("venue", "v1")...

    Raises `Refusal` for a topic outside the contract.
    """
    parts = topic.split("/")
    if (
        len(parts) == 5
        and "/".join(parts[:3]) == f"{TOPIC_ROOT}/units"
        and _ID_RE.fullmatch(parts[3])
    ) and parts[4] in ("scans", "ack", "status"):
        return parts[4], parts[3]
    if (
        len(parts) == 5
        and "/".join(parts[:3]) == f"{TOPIC_ROOT}/registry"
        and _ID_RE.fullmatch(parts[4])
    ) and parts[3] in ("venues", "units"):
        return parts[3].rstrip("s"), parts[4]
    raise Refusal("unknown_topic", f"topic {topic[:200]!r} is not part of the wire contract")


class Scan(_Message):
    """One check-in as the unit recorded it. The hub parses `qr_text` with the same parsers.

    A unit with the hub's sealing key sends `sealed` (the QR text sealed for the hub,
    `doorscan.sealing`) and `kind` instead; exactly one of `qr_text` and `sealed` is set.
    """

    scan_id: ScanId = Field(description="minted on the unit, unique forever; the hub's dedup key")
    venue_id: EntityId
    scanned_at: UtcTime = Field(description="the unit's wall clock when the code was read")
    clock_trusted: bool = Field(
        True, description="false when the unit had no confirmed time (a Pi has no real-time clock)"
    )
    qr_text: str | None = Field(
        None, min_length=1, max_length=MAX_QR_CHARS, description="the exact decoded text"
    )
    sealed: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_SEALED_CHARS,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the exact decoded text sealed for the hub (base64url), instead of qr_text",
    )
    kind: Literal["cccd", "health", "card"] | None = Field(
        None, description="with sealed: the kind of identity the unit read, in the clear"
    )
    boot_id: BootId | None = Field(
        None, description="with an untrusted clock: the unit's boot, to correct the time later"
    )
    mono_ms: int | None = Field(
        None, ge=0, description="with an untrusted clock: the unit's monotonic clock at the scan"
    )
    v: Literal[1] = 1

    @model_validator(mode="after")
    def _one_text(self) -> Scan:
        if (self.qr_text is None) == (self.sealed is None):
            raise ValueError("a scan carries exactly one of qr_text and sealed")
        return self


class ScanBatch(_Message):
    """What a unit publishes on its scans topic."""

    schema_: Literal["doorscan.scan-batch"] = Field("doorscan.scan-batch", alias="schema")
    batch_id: ScanId
    unit_id: EntityId
    sent_at: UtcTime
    scans: list[Scan] = Field(min_length=1, max_length=MAX_BATCH_SCANS)
    boot_id: BootId | None = Field(None, description="the unit's boot when it sent this batch")
    sent_mono_ms: int | None = Field(
        None, ge=0, description="the unit's monotonic clock when it sent this batch"
    )

    @model_validator(mode="after")
    def _distinct_scans(self) -> ScanBatch:
        if len({s.scan_id for s in self.scans}) != len(self.scans):
            raise ValueError("a batch names the same scan_id twice")
        return self


class RefusedScan(_Message):
    scan_id: ScanId
    reason: str = Field(max_length=300)
    v: Literal[1] = 1


class Ack(_Message):
    """The hub's answer to a batch, sent only after its commit.

    Every scan id of the batch is in exactly one list: `stored` (now durable on the
    hub, including ones it already had) or `refused` (kept in the hub's dead-letter
    table with the reason). Either way the unit may forget it.
    """

    schema_: Literal["doorscan.ack"] = Field("doorscan.ack", alias="schema")
    batch_id: ScanId
    unit_id: EntityId
    stored: list[ScanId] = Field(default_factory=list, max_length=MAX_BATCH_SCANS)
    refused: list[RefusedScan] = Field(default_factory=list, max_length=MAX_BATCH_SCANS)
    hub_time: UtcTime


class UnitStatus(_Message):
    """Retained on the status topic; the broker publishes `online=False` as the last will.

    Every field after `online` is optional: the last will carries none of the figures,
    and a hub reads the status of units that predate the health fields.
    """

    schema_: Literal["doorscan.unit-status"] = Field("doorscan.unit-status", alias="schema")
    unit_id: EntityId
    online: bool
    at: UtcTime | None = None
    software: str | None = Field(None, max_length=40)
    backlog: int | None = Field(None, ge=0)
    last_scan_at: UtcTime | None = None
    uptime_s: int | None = Field(None, ge=0, description="seconds since the unit started")
    clock_trusted: bool | None = Field(None, description="NTP or the hub vouches for the clock")
    cpu_temp_c: float | None = Field(None, ge=-60, le=150, description="SoC temperature")
    disk_free_mb: int | None = Field(None, ge=0, description="free space in the data folder")
    camera_ok: bool | None = Field(None, description="frames are arriving")
    decode_rate_hz: float | None = Field(None, ge=0, le=1000, description="frames decoded per s")
    config_version: int | None = Field(
        None, ge=1, description="version of the remote config (UnitConfigUpdate) applied"
    )
    config_error: str | None = Field(
        None, max_length=300, description="why the last remote config was refused, with its version"
    )


CONFIG_SETTINGS = ("debounce_s", "feedback_volume", "frame_rate", "quiet_hours")
"""The settings a `UnitConfigUpdate` may carry (`hub unit-config UNIT key=value`)."""

QUIET_HOURS_TZ = timezone(timedelta(hours=7), "ICT")
"""Quiet hours are Vietnam's local time (UTC+7 all year: Vietnam has no daylight saving)."""

_QUIET_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")


def parse_quiet_hours(text: str) -> tuple[time, time]:
    """``"22:00-06:00"`` -> (start, end), Vietnam local time; the span may cross midnight."""
    match = _QUIET_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"quiet hours {text[:40]!r} are not HH:MM-HH:MM (24 h, Vietnam time)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = time(h1, m1), time(h2, m2)
    if start == end:
        raise ValueError("quiet hours start and end at the same minute")
    return start, end


def _quiet_hours(text: str) -> str:
    parse_quiet_hours(text)
    return text


class UnitConfigUpdate(_Message):
    """The hub's remote config for one unit, retained on its config topic.

    Each setting left out (None) means "as the unit's own config file says". A unit
    applies a version only if it is above the one it has applied (a retained message
    is delivered again at every connect), and refuses a message it cannot validate,
    keeping what it had and reporting `config_error` in its status. Only the hub may
    write this topic: the broker ACL (`provisioning.broker_pki.acl_text`) is the
    guarantee of origin, so the message carries no signature.
    """

    schema_: Literal["doorscan.unit-config"] = Field("doorscan.unit-config", alias="schema")
    unit_id: EntityId
    version: int = Field(ge=1, le=2**53, description="goes up by one with each change")
    issued_at: UtcTime
    debounce_s: float | None = Field(
        None, ge=0, le=86400, description="same person within this time: 'already in', no record"
    )
    feedback_volume: int | None = Field(
        None,
        ge=0,
        le=100,
        description="buzzer loudness in percent; the active buzzer is on/off: 0 silent, >0 on",
    )
    frame_rate: float | None = Field(
        None, ge=1, le=30, description="frames decoded per second at most"
    )
    quiet_hours: Annotated[str, AfterValidator(_quiet_hours)] | None = Field(
        None,
        max_length=11,
        description="HH:MM-HH:MM Vietnam time: the buzzer is silent, the LEDs still show",
    )

    def settings(self) -> dict[str, Any]:
        """The settings this message sets (those left out are not in the dict)."""
        return {
            name: value for name in CONFIG_SETTINGS if (value := getattr(self, name)) is not None
        }


class VenueRecord(_Message):
    schema_: Literal["doorscan.venue"] = Field("doorscan.venue", alias="schema")
    venue_id: EntityId
    name: str = Field(min_length=1, max_length=200)
    address: str = Field("", max_length=300)
    district: str = Field("", max_length=100)


class UnitRecord(_Message):
    schema_: Literal["doorscan.unit"] = Field("doorscan.unit", alias="schema")
    unit_id: EntityId
    venue_id: EntityId
    active: bool = True


M = TypeVar("M", bound=_Message)


def encode_message(message: _Message) -> bytes:
    """Serialise a message to compact UTF-8 JSON, the only encoding on the wire."""
    # Optional fields that are not set are left out: a reader takes their default.
    data = message.model_dump(mode="json", by_alias=True, exclude_none=True)
    _format_times(data)
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Refusal("too_large", f"message of {len(payload)} bytes is over {MAX_MESSAGE_BYTES}")
    return payload


def _format_times(data: Any) -> None:
    # pydantic writes "+00:00"; the contract says RFC 3339 with "Z" and milliseconds.
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str) and key in (
                "scanned_at",
                "sent_at",
                "hub_time",
                "at",
                "last_scan_at",
                "issued_at",
            ):
                data[key] = format_rfc3339(parse_rfc3339(value))
            else:
                _format_times(value)
    elif isinstance(data, list):
        for item in data:
            _format_times(item)


def decode_message(payload: bytes, model: type[M]) -> M:
    """Parse and validate one message; raise `Refusal` with a short reason on any fault."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Refusal("too_large", f"message of {len(payload)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refusal("not_utf8", f"message is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise Refusal("not_json", f"message is not JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise Refusal("not_object", "message is not a JSON object")
    if data.get("v") != SCHEMA_VERSION:
        raise Refusal(
            "schema_version", f"schema version {str(data.get('v'))[:20]!r} is not supported"
        )
    try:
        # Strict: "12" is not a number and 1 is not true. JSON mode still reads RFC 3339 times.
        return model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise Refusal("schema", f"{where}: {first['msg']}"[:300]) from None
