"""The wire contract: round trips, refusals, and the examples in docs/wire.md."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from doorscan import wire
from doorscan.errors import Refusal
from doorscan.wire import Ack, Scan, ScanBatch, decode_message, encode_message

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire.md"


def _batch(**changes: object) -> ScanBatch:
    scan = Scan(
        scan_id="abcdef0123456789",
        venue_id="v1",
        scanned_at=datetime(2021, 8, 15, 2, 30, tzinfo=UTC),
        qr_text="anything|at|all",
    )
    fields: dict[str, object] = {
        "batch_id": "batch-0001",
        "unit_id": "u1",
        "sent_at": datetime(2021, 8, 15, 2, 31, tzinfo=UTC),
        "scans": [scan],
    }
    fields.update(changes)
    return ScanBatch.model_validate(fields)


def test_every_example_in_docs_validates_against_its_model() -> None:
    text = DOC.read_text(encoding="utf-8")
    examples = re.findall(r"<!-- model: (\w+) -->\n```json\n(.*?)\n```", text, re.S)
    names = {name for name, _ in examples}
    assert names == {
        "ScanBatch",
        "Ack",
        "UnitStatus",
        "UnitConfigUpdate",
        "VenueRecord",
        "UnitRecord",
    }
    for name, body in examples:
        model = getattr(wire, name)
        message = decode_message(body.encode("utf-8"), model)
        # The documented form is exactly what encode_message writes.
        assert json.loads(encode_message(message)) == json.loads(body)


def test_round_trip_keeps_times_in_utc_with_milliseconds() -> None:
    local = timezone(timedelta(hours=7))
    batch = _batch(sent_at=datetime(2021, 8, 15, 9, 31, 0, 250000, tzinfo=local))
    payload = encode_message(batch)
    assert b'"sent_at":"2021-08-15T02:31:00.250Z"' in payload
    assert decode_message(payload, ScanBatch) == batch


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_utf8"),
        (b"[1, 2]", "not_object"),
        (b'{"v": 2}', "schema_version"),
        (b'{"v": "1"}', "schema_version"),
        (b'{"v": 1, "schema": "doorscan.scan-batch"}', "schema"),
        (b"x" * (wire.MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_bad_payloads_are_refused_with_a_code(payload: bytes, code: str) -> None:
    with pytest.raises(Refusal) as refused:
        decode_message(payload, ScanBatch)
    assert refused.value.code == code


def test_wrong_types_and_unknown_keys_are_refused() -> None:
    good = json.loads(encode_message(_batch()))
    mutations: tuple[Callable[[Any], None], ...] = (
        lambda d: d.update(extra=1),
        lambda d: d["scans"][0].update(clock_trusted="yes"),
        lambda d: d["scans"][0].update(scanned_at="2021-08-15T02:30:00"),  # no offset
        lambda d: d.update(unit_id="u1/../u2"),
        lambda d: d.update(scans=[]),
    )
    for mutate in mutations:
        data = json.loads(json.dumps(good))
        mutate(data)
        with pytest.raises(Refusal):
            decode_message(json.dumps(data).encode(), ScanBatch)


def test_a_batch_cannot_name_one_scan_twice() -> None:
    data = json.loads(encode_message(_batch()))
    data["scans"].append(dict(data["scans"][0]))
    with pytest.raises(Refusal, match="same scan_id twice"):
        decode_message(json.dumps(data).encode(), ScanBatch)


def test_topics_round_trip_and_refuse_strangers() -> None:
    assert wire.parse_topic(wire.topic_scans("door-1")) == ("scans", "door-1")
    assert wire.parse_topic(wire.topic_ack("door-1")) == ("ack", "door-1")
    assert wire.parse_topic(wire.topic_registry_venue("v1")) == ("venue", "v1")
    assert wire.parse_topic(wire.topic_registry_unit("door-1")) == ("unit", "door-1")
    for topic in ("doorscan/v1/units/door-1/other", "doorscan/v2/units/a/scans", "x", ""):
        with pytest.raises(Refusal):
            wire.parse_topic(topic)
    with pytest.raises(ValueError):
        wire.topic_scans("+")


def test_ack_lists_default_empty() -> None:
    ack = Ack(batch_id="batch-0001", unit_id="u1", hub_time=datetime.now(UTC))
    assert decode_message(encode_message(ack), Ack).stored == []


def _config_update(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "v": 1,
        "schema": "doorscan.unit-config",
        "unit_id": "u1",
        "version": 2,
        "issued_at": "2021-08-15T02:31:00.000Z",
    }
    fields.update(changes)
    return fields


def test_a_unit_config_round_trips_and_names_only_what_it_sets() -> None:
    payload = json.dumps(_config_update(frame_rate=5, quiet_hours="22:00-06:00")).encode()
    update = decode_message(payload, wire.UnitConfigUpdate)
    assert update.frame_rate == 5.0 and update.debounce_s is None
    assert update.settings() == {"frame_rate": 5.0, "quiet_hours": "22:00-06:00"}
    assert decode_message(encode_message(update), wire.UnitConfigUpdate) == update
    assert wire.topic_config("u1") == "doorscan/v1/units/u1/config"


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"colour": "red"}, "colour"),
        ({"feedback_volume": 101}, "feedback_volume"),
        ({"feedback_volume": "50"}, "feedback_volume"),  # strict: text is not a number
        ({"frame_rate": 0.5}, "frame_rate"),
        ({"frame_rate": 31}, "frame_rate"),
        ({"debounce_s": -1}, "debounce_s"),
        ({"quiet_hours": "22:00-24:00"}, "quiet_hours"),
        ({"quiet_hours": "07:00-07:00"}, "quiet_hours"),
        ({"version": 0}, "version"),
        ({"unit_id": "U/1"}, "unit_id"),
    ],
)
def test_a_bad_unit_config_is_refused_by_name(changes: dict[str, object], where: str) -> None:
    with pytest.raises(Refusal) as caught:
        decode_message(json.dumps(_config_update(**changes)).encode(), wire.UnitConfigUpdate)
    assert caught.value.code == "schema" and caught.value.reason.startswith(where)


def test_status_carries_the_config_version_and_error() -> None:
    status = wire.UnitStatus(
        unit_id="u1", online=True, config_version=4, config_error="version 5 refused: x"
    )
    again = decode_message(encode_message(status), wire.UnitStatus)
    assert again.config_version == 4 and again.config_error == "version 5 refused: x"
