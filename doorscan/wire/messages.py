"""The wire contract's topics and message models (`doorscan.wire` presents them).

Topics (``{unit}`` and ``{venue}`` are ids matching `ID_PATTERN`)::

    doorscan/v1/units/{unit}/scans       unit -> hub     QoS 1               ScanBatch
    doorscan/v1/units/{unit}/ack         hub -> unit     QoS 1               Ack
    doorscan/v1/units/{unit}/status      unit -> all     QoS 1, retained     UnitStatus (+ will)
    doorscan/v1/units/{unit}/config      hub -> unit     QoS 1, retained     UnitConfigUpdate
    doorscan/v1/hub/status               hub -> all      QoS 1, retained     HubStatus (+ will)
    doorscan/v1/registry/venues/{venue}  provisioning    QoS 1, retained     VenueRecord
    doorscan/v1/registry/units/{unit}    provisioning    QoS 1, retained     UnitRecord

Delivery: a unit keeps every scan in its journal until an `Ack` names it; the hub
sends that ack only after its own commit. A broker PUBACK is not enough, because
the broker may hold the message only in memory.

Each field added after the first contract names its revision (``since``); see
`doorscan.wire.codec` for what a revision is and how units and hubs of different ages
talk.
"""

from __future__ import annotations

import base64
import re
from datetime import date, datetime, time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from doorscan.errors import Refusal
from doorscan.release import VERSION_PATTERN
from doorscan.timefmt import VIETNAM, parse_rfc3339
from doorscan.wire.limits import (
    MAX_BATCH_SCANS,
    MAX_QR_CHARS,
    MAX_REASON_CHARS,
    MAX_SEALED_CHARS,
    MAX_WIRE_INT,
)

__all__ = [
    "ID_PATTERN",
    "SCAN_ID_PATTERN",
    "CODE_PATTERN",
    "SCHEMA_VERSION",
    "TOPIC_ROOT",
    "Ack",
    "BatchRefusal",
    "HubStatus",
    "RefusedScan",
    "Scan",
    "ScanBatch",
    "BatchHead",
    "CONFIG_SETTINGS",
    "QUIET_HOURS_TZ",
    "UnitConfigUpdate",
    "UnitRecord",
    "UnitStatus",
    "UpdateState",
    "VenueRecord",
    "MESSAGES",
    "topic_ack",
    "topic_config",
    "topic_hub_status",
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
"""The major version: ``"v": 1`` in every message and ``doorscan/v1`` in every topic."""
TOPIC_ROOT = "doorscan/v1"
ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
SCAN_ID_PATTERN = r"[A-Za-z0-9_-]{8,64}"
"""Scan and batch ids: minted by units, so wider than a topic-level id."""
CODE_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
"""A refusal code: a short lowercase name of the rule (docs/wire.md lists them)."""
_ID_RE = re.compile(ID_PATTERN)

# The wire never carries a name of anything that could break a topic (`+`, `#`, `/`).
EntityId = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$")]
ScanId = Annotated[str, StringConstraints(pattern=f"^{SCAN_ID_PATTERN}$")]
BootId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8,32}$")]
Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
WireInt = Annotated[int, Field(ge=0, le=MAX_WIRE_INT)]


def _no_nul(value: str) -> str:
    # PostgreSQL's TEXT cannot hold U+0000: a hub on PostgreSQL would fail to store the
    # message on every delivery. No doorscan text needs it, so it is refused at the door.
    if "\x00" in value:
        raise ValueError("text may not contain U+0000")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
"""Free text that a store keeps as text (names, reasons, versions)."""


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a UTC offset")
    return parse_rfc3339(value.isoformat())


UtcTime = Annotated[datetime, AfterValidator(_utc)]


def since(revision: int) -> dict[str, Any]:
    """`Field(json_schema_extra=...)` of a field added in `revision` (see `doorscan.wire.codec`)."""
    return {"since": revision}


def _version_required(schema: dict[str, Any]) -> None:
    # The models give "v" a default so that code need not write it; a reader of the wire
    # requires it, so the published schema does.
    required = schema.setdefault("required", [])
    if "v" not in required:
        required.insert(0, "v")


class _Message(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        str_max_length=MAX_QR_CHARS,
        json_schema_extra=_version_required,
    )

    v: Literal[1] = Field(1, description="schema version; a message of another version is refused")
    rev: int | None = Field(
        None,
        ge=1,
        le=999,
        description="the revision of the contract the writer speaks (absent: 5 or older)",
        json_schema_extra=since(6),
    )


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


def topic_hub_status() -> str:
    """The hub's retained `HubStatus` (its "birth" message and, as its will, its death)."""
    return f"{TOPIC_ROOT}/hub/status"


def topic_registry_venue(venue_id: str) -> str:
    return f"{TOPIC_ROOT}/registry/venues/{_topic(venue_id).rsplit('/', 1)[1]}"


def topic_registry_unit(unit_id: str) -> str:
    return f"{TOPIC_ROOT}/registry/units/{_topic(unit_id).rsplit('/', 1)[1]}"


def topic_card_revocations() -> str:
    """The fleet's retained `CardRevocations`; only provisioning may write it (broker ACL)."""
    return f"{TOPIC_ROOT}/registry/cards/revoked"


def topic_fleet_keys() -> str:
    """The fleet's retained `FleetKeys`; only provisioning may write it (broker ACL)."""
    return f"{TOPIC_ROOT}/registry/fleet/keys"


SUB_ALL_SCANS = f"{TOPIC_ROOT}/units/+/scans"
SUB_ALL_STATUS = f"{TOPIC_ROOT}/units/+/status"
SUB_REGISTRY = f"{TOPIC_ROOT}/registry/#"


def parse_topic(topic: str) -> tuple[str, str]:
    """Split a doorscan topic into (kind, entity id): ("scans", "u1"), ("venue", "v1")...

    Raises `Refusal` (``unknown_topic``) for a topic outside the contract.
    """
    parts = topic.split("/")
    if (
        len(parts) == 5
        and "/".join(parts[:3]) == f"{TOPIC_ROOT}/units"
        and _ID_RE.fullmatch(parts[3])
    ) and parts[4] in ("scans", "ack", "status", "config"):
        return parts[4], parts[3]
    if (
        len(parts) == 5
        and "/".join(parts[:3]) == f"{TOPIC_ROOT}/registry"
        and _ID_RE.fullmatch(parts[4])
    ) and parts[3] in ("venues", "units"):
        return parts[3].rstrip("s"), parts[4]
    if topic == topic_hub_status():
        return "hub", "hub"
    if topic == topic_card_revocations():
        return "card_revocations", "cards"
    if topic == topic_fleet_keys():
        return "fleet_keys", "fleet"
    raise Refusal("unknown_topic", f"topic {topic[:200]!r} is not part of the wire contract")


def _one_text_schema(schema: dict[str, Any]) -> None:
    _version_required(schema)
    schema["oneOf"] = [{"required": ["qr_text"]}, {"required": ["sealed"]}]


class Scan(_Message):
    """One check-in as the unit recorded it. The hub parses `qr_text` with the same parsers.

    A unit with the hub's sealing key sends `sealed` (the QR text sealed for the hub,
    `doorscan.sealing`) and `kind` instead; exactly one of `qr_text` and `sealed` is set.
    """

    model_config = ConfigDict(json_schema_extra=_one_text_schema)

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
        json_schema_extra=since(3),
    )
    kind: Literal["cccd", "health", "card"] | None = Field(
        None,
        description="with sealed: the kind of identity the unit read, in the clear",
        json_schema_extra=since(3),
    )
    boot_id: BootId | None = Field(
        None,
        description="with an untrusted clock: the unit's boot, to correct the time later",
        json_schema_extra=since(2),
    )
    mono_ms: WireInt | None = Field(
        None,
        description="with an untrusted clock: the unit's monotonic clock at the scan",
        json_schema_extra=since(2),
    )

    @model_validator(mode="after")
    def _one_text(self) -> Scan:
        if (self.qr_text is None) == (self.sealed is None):
            raise ValueError("a scan carries exactly one of qr_text and sealed")
        return self


class BatchHead(_Message):
    """A `ScanBatch` without its scans: what the hub reads first, to know whom to answer."""

    schema_: Literal["doorscan.scan-batch"] = Field("doorscan.scan-batch", alias="schema")
    batch_id: ScanId = Field(description="new for every send, resends included")
    unit_id: EntityId
    sent_at: UtcTime
    boot_id: BootId | None = Field(
        None, description="the unit's boot when it sent this batch", json_schema_extra=since(2)
    )
    sent_mono_ms: WireInt | None = Field(
        None,
        description="the unit's monotonic clock when it sent this batch",
        json_schema_extra=since(2),
    )


class ScanBatch(BatchHead):
    """What a unit publishes on its scans topic."""

    scans: list[Scan] = Field(min_length=1, max_length=MAX_BATCH_SCANS)

    @model_validator(mode="after")
    def _distinct_scans(self) -> ScanBatch:
        if len({s.scan_id for s in self.scans}) != len(self.scans):
            raise ValueError("a batch names the same scan_id twice")
        return self


class RefusedScan(_Message):
    """One scan the hub did not store, and why."""

    scan_id: ScanId
    reason: Text = Field(max_length=MAX_REASON_CHARS, description="for people; never identity")
    code: Code | None = Field(
        None, description="the rule, for programs (docs/wire.md)", json_schema_extra=since(6)
    )
    retry: bool | None = Field(
        None,
        description="true: the hub cannot take it now (keep it, send it later); "
        "absent: final, the hub keeps it among its dead letters",
        json_schema_extra=since(6),
    )


class BatchRefusal(_Message):
    """Why a whole batch was not judged; it applies to every scan the batch carried."""

    code: Code
    reason: Text = Field(max_length=MAX_REASON_CHARS)
    retry: bool | None = Field(
        None, description="true: send the scans again later (in a new batch); absent: final"
    )


class Ack(_Message):
    """The hub's answer to a batch, sent only after its commit.

    Every scan id of the batch is in exactly one list: `stored` (now durable on the
    hub, including ones it already had) or `refused`; or, with `refusal`, the batch
    was refused whole and both lists are empty. A refused scan without ``retry`` is
    final: the hub keeps it among its dead letters, and a unit quarantines it (keeps
    it, counts it, sends it no more). With ``retry`` the unit keeps it and sends it
    again later.
    """

    schema_: Literal["doorscan.ack"] = Field("doorscan.ack", alias="schema")
    batch_id: ScanId
    unit_id: EntityId
    stored: list[ScanId] = Field(default_factory=list, max_length=MAX_BATCH_SCANS)
    refused: list[RefusedScan] = Field(default_factory=list, max_length=MAX_BATCH_SCANS)
    refusal: BatchRefusal | None = Field(
        None, description="the batch was refused whole", json_schema_extra=since(6)
    )
    hub_time: UtcTime = Field(
        description="the hub's clock when it committed the batch: a unit without a trusted "
        "clock may take it as the time, less the round trip it measured"
    )

    @model_validator(mode="after")
    def _whole_or_split(self) -> Ack:
        if self.refusal is not None and (self.stored or self.refused):
            raise ValueError("an ack refusing the whole batch names no scan")
        return self


UpdateState = Literal["downloading", "staged", "switched", "confirmed", "rolled_back", "failed"]
"""The steps of a unit's software update (`device.update_agent`), as its status reports them."""


class UnitStatus(_Message):
    """Retained on the status topic; the broker publishes `online=False` as the last will.

    Every field after `online` is optional: the last will carries none of the figures,
    and a hub reads the status of units that predate the health fields.
    """

    schema_: Literal["doorscan.unit-status"] = Field("doorscan.unit-status", alias="schema")
    unit_id: EntityId
    online: bool
    at: UtcTime | None = None
    software: Text | None = Field(None, max_length=40)
    backlog: WireInt | None = Field(None, description="scans the hub has not acked yet")
    last_scan_at: UtcTime | None = None
    uptime_s: WireInt | None = Field(
        None, description="seconds since the unit started", json_schema_extra=since(4)
    )
    clock_trusted: bool | None = Field(
        None, description="NTP or the hub vouches for the clock", json_schema_extra=since(4)
    )
    cpu_temp_c: float | None = Field(
        None, ge=-60, le=150, description="SoC temperature", json_schema_extra=since(4)
    )
    disk_free_mb: WireInt | None = Field(
        None, description="free space in the data folder", json_schema_extra=since(4)
    )
    camera_ok: bool | None = Field(
        None, description="frames are arriving", json_schema_extra=since(4)
    )
    decode_rate_hz: float | None = Field(
        None, ge=0, le=1000, description="frames decoded per s", json_schema_extra=since(4)
    )
    config_version: int | None = Field(
        None,
        ge=1,
        le=MAX_WIRE_INT,
        description="version of the remote config (UnitConfigUpdate) applied",
        json_schema_extra=since(5),
    )
    config_error: Text | None = Field(
        None,
        max_length=MAX_REASON_CHARS,
        description="why the last remote config was refused, with its version",
        json_schema_extra=since(5),
    )
    config_refused_version: int | None = Field(
        None,
        ge=1,
        le=MAX_WIRE_INT,
        description="the version of the remote config the unit refused last (config_error "
        "says why); absent once a later version is applied",
        json_schema_extra=since(6),
    )
    quarantined: WireInt | None = Field(
        None,
        description="scans the hub refused for good, kept on the unit and sent no more",
        json_schema_extra=since(6),
    )
    update_version: str | None = Field(
        None,
        pattern=VERSION_PATTERN,
        description="the release the unit's last update was about (update_state says how far)",
        json_schema_extra=since(10),
    )
    update_state: UpdateState | None = Field(
        None,
        description="how far the update to update_version got: downloading, staged "
        "(installed beside the running release), switched (restarted into it, not yet "
        "confirmed), confirmed, rolled_back (back on the release before), failed (never "
        "switched; update_error says why)",
        json_schema_extra=since(10),
    )
    update_error: Text | None = Field(
        None,
        max_length=MAX_REASON_CHARS,
        description="why the update failed or was rolled back",
        json_schema_extra=since(10),
    )


class HubStatus(_Message):
    """The hub's retained "birth" message; its last will says ``online: false``.

    It tells units which revision of the contract the hub reads (`doorscan.wire.codec`).
    """

    schema_: Literal["doorscan.hub-status"] = Field("doorscan.hub-status", alias="schema")
    online: bool
    revision: int | None = Field(
        None, ge=1, le=999, description="the newest revision the hub reads (all older too)"
    )
    software: Text | None = Field(None, max_length=40)
    at: UtcTime | None = None


CONFIG_SETTINGS = ("debounce_s", "feedback_volume", "frame_rate", "quiet_hours", "software")
"""The settings a `UnitConfigUpdate` may carry (`hub unit-config UNIT key=value`)."""

QUIET_HOURS_TZ = VIETNAM
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
    version: int = Field(ge=1, le=MAX_WIRE_INT, description="goes up by one with each change")
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
    software: str | None = Field(
        None,
        pattern=VERSION_PATTERN,
        description="the signed release this unit should run (`provisioning release build`, "
        "`hub fleet-update`); its status's `software` says what it runs",
        json_schema_extra=since(9),
    )

    def settings(self) -> dict[str, Any]:
        """The settings this message sets (those left out are not in the dict)."""
        return {
            name: value for name in CONFIG_SETTINGS if (value := getattr(self, name)) is not None
        }


class VenueRecord(_Message):
    schema_: Literal["doorscan.venue"] = Field("doorscan.venue", alias="schema")
    venue_id: EntityId
    name: Text = Field(min_length=1, max_length=200)
    address: Text = Field("", max_length=300)
    district: Text = Field("", max_length=100)


class UnitRecord(_Message):
    """A unit as provisioning registered it. A unit whose record says ``active: false``
    is revoked; scans it claims to have made before `registered_at` are held apart."""

    schema_: Literal["doorscan.unit"] = Field("doorscan.unit", alias="schema")
    unit_id: EntityId
    venue_id: EntityId
    active: bool = True
    registered_at: UtcTime | None = Field(
        None,
        description="when provisioning registered the unit: no scan of it can be older",
        json_schema_extra=since(6),
    )


CardId = Annotated[str, StringConstraints(pattern=r"^[0-9A-HJKMNP-TV-Z]{10}$")]
MAX_REVOKED_CARDS = 100_000
"""Revoked cards in one list: a province's cards over years, a few MB at most."""


class RevokedCard(_Message):
    card_id: CardId
    revoked_on: date = Field(description="Vietnam day: scans of the card from this day are refused")


class CardRevocations(_Message):
    """Every revoked visitor card of the fleet, retained on `topic_card_revocations`.

    The whole list each time (a unit that was offline for a month needs no history):
    `version` goes up by one with each change, and a reader keeps the highest it has seen,
    so an older list delivered late never undoes a revocation. Units refuse a revoked
    card at the door (red, ``card_revoked``); the hub refuses scans of it dated from
    `revoked_on`. Only provisioning may write the topic (the broker ACL is the guarantee
    of origin, as for `UnitConfigUpdate`).
    """

    schema_: Literal["doorscan.card-revocations"] = Field(
        "doorscan.card-revocations", alias="schema"
    )
    version: int = Field(ge=1, le=MAX_WIRE_INT, description="goes up by one with each change")
    issued_at: UtcTime
    revoked: list[RevokedCard] = Field(max_length=MAX_REVOKED_CARDS)

    def by_card(self) -> dict[str, date]:
        return {r.card_id: r.revoked_on for r in self.revoked}


RawKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]
"""A 32-byte public key (X25519 or Ed25519) in unpadded base64url."""
MAX_CARD_KEYS = 16


KEY_FINGERPRINT_CHARS = 16


def key_fingerprint(raw_key: str) -> str:
    """A `RawKey`'s short name for people: its first 16 characters, as every doorscan
    tool prints it (provisioning when it publishes, the hub when it compares)."""
    return raw_key[:KEY_FINGERPRINT_CHARS]


def raw_key_text(public_bytes: bytes) -> str:
    """A 32-byte public key as `RawKey` text: unpadded base64url."""
    if len(public_bytes) != 32:
        raise ValueError(f"a raw public key is 32 bytes, not {len(public_bytes)}")
    return base64.urlsafe_b64encode(public_bytes).decode("ascii").rstrip("=")


class FleetKeys(_Message):
    """The public keys the fleet's units and cards use, retained on `topic_fleet_keys`.

    Provisioning publishes it with the registry. The hub compares it with the keys it
    holds before it starts (``doorscan-hub check``): a hub without the private key whose
    public half the units seal to, or without a card key the fleet signs with, would
    dead-letter every such scan while the doors light green.
    """

    schema_: Literal["doorscan.fleet-keys"] = Field("doorscan.fleet-keys", alias="schema")
    issued_at: UtcTime
    seal_public_key: RawKey | None = Field(
        None, description="the hub's public sealing key units seal to (None: scans in clear)"
    )
    card_public_keys: list[RawKey] = Field(
        default_factory=list,
        max_length=MAX_CARD_KEYS,
        description="the Ed25519 keys visitor cards are signed with",
    )


MESSAGES: tuple[type[_Message], ...] = (
    ScanBatch,
    Ack,
    UnitStatus,
    UnitConfigUpdate,
    HubStatus,
    VenueRecord,
    UnitRecord,
    CardRevocations,
    FleetKeys,
)
"""Every message that travels alone on a topic (`docs/schema/` has one file each)."""
