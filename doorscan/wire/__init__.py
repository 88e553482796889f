"""The wire contract: every MQTT topic, message, limit and revision doorscan uses.

This is the one import that the door unit, the hub and provisioning share for what
travels between them; `docs/wire.md` states it for people and `docs/schema/` as JSON
Schema, and the tests check both against the models here. Three rooms behind it:

- `doorscan.wire.messages`: topics and the pydantic models of every message;
- `doorscan.wire.codec`: bytes in and out (strict reading that only ever raises
  `Refusal`), and the revisions of the contract;
- `doorscan.wire.limits`: every size and rule, with the table docs/wire.md prints.

    >>> from doorscan.wire import UnitRecord, decode_message, encode_message
    >>> record = UnitRecord(unit_id="door-1", venue_id="cho-pleiku")
    >>> decode_message(encode_message(record), UnitRecord) == record
    True
"""

from doorscan.wire.codec import (
    REV_FIELD_SINCE,
    REVISIONS,
    WIRE_REVISION,
    canonical_bytes,
    check_version,
    decode_message,
    encode_message,
    load_json,
    revision_of,
    schema_refusal,
    written_for,
)
from doorscan.wire.limits import (
    MAX_BATCH_SCANS,
    MAX_MESSAGE_BYTES,
    MAX_QR_CHARS,
    MAX_REASON_CHARS,
    MAX_SEALED_CHARS,
    MAX_WIRE_INT,
)
from doorscan.wire.messages import (
    CODE_PATTERN,
    CONFIG_SETTINGS,
    ID_PATTERN,
    MESSAGES,
    QUIET_HOURS_TZ,
    SCAN_ID_PATTERN,
    SCHEMA_VERSION,
    SUB_ALL_SCANS,
    SUB_ALL_STATUS,
    SUB_REGISTRY,
    TOPIC_ROOT,
    Ack,
    BatchHead,
    BatchRefusal,
    CardRevocations,
    FleetKeys,
    HubStatus,
    RefusedScan,
    RevokedCard,
    Scan,
    ScanBatch,
    UnitConfigUpdate,
    UnitRecord,
    UnitStatus,
    VenueRecord,
    parse_quiet_hours,
    parse_topic,
    raw_key_text,
    topic_ack,
    topic_card_revocations,
    topic_config,
    topic_fleet_keys,
    topic_hub_status,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
    topic_status,
)

__all__ = [
    "CODE_PATTERN",
    "CONFIG_SETTINGS",
    "ID_PATTERN",
    "MAX_BATCH_SCANS",
    "MAX_MESSAGE_BYTES",
    "MAX_QR_CHARS",
    "MAX_REASON_CHARS",
    "MAX_SEALED_CHARS",
    "MAX_WIRE_INT",
    "MESSAGES",
    "QUIET_HOURS_TZ",
    "REVISIONS",
    "REV_FIELD_SINCE",
    "SCAN_ID_PATTERN",
    "SCHEMA_VERSION",
    "SUB_ALL_SCANS",
    "SUB_ALL_STATUS",
    "SUB_REGISTRY",
    "TOPIC_ROOT",
    "WIRE_REVISION",
    "canonical_bytes",
    "Ack",
    "BatchHead",
    "BatchRefusal",
    "HubStatus",
    "RefusedScan",
    "Scan",
    "ScanBatch",
    "UnitConfigUpdate",
    "UnitRecord",
    "CardRevocations",
    "FleetKeys",
    "RevokedCard",
    "topic_card_revocations",
    "UnitStatus",
    "VenueRecord",
    "check_version",
    "decode_message",
    "encode_message",
    "load_json",
    "parse_quiet_hours",
    "parse_topic",
    "raw_key_text",
    "revision_of",
    "schema_refusal",
    "topic_ack",
    "topic_config",
    "topic_fleet_keys",
    "topic_hub_status",
    "topic_registry_unit",
    "topic_registry_venue",
    "topic_scans",
    "topic_status",
    "written_for",
]
