"""The wire contract: round trips, refusals, and the examples in docs/wire.md."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from doorscan import wire
from doorscan.errors import Refusal
from doorscan.wire import Ack, Scan, ScanBatch, decode_message, encode_message
from doorscan.wire.codes import REFUSAL_CODES
from doorscan.wire.schema import render_all, render_wire_md

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
    assert names == {model.__name__ for model in wire.MESSAGES}
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
        (b'{"v": true}', "schema_version"),
        (b'{"v": 1.0}', "schema_version"),
        (b'{"schema": "doorscan.scan-batch"}', "schema_version"),
        (b'{"v": 1, "rev": %d}' % (wire.WIRE_REVISION + 1), "unsupported_revision"),
        (b'{"v": 1, "rev": "6"}', "schema"),
        (b'{"v": 1, "rev": 0}', "schema"),
        (b'{"v": 1, "x": NaN}', "not_json"),
        (b'{"v": 1, "x": Infinity}', "not_json"),
        (b'{"v": 1, "x": ' + b"1" * 4400 + b"}", "not_json"),
        (b"[" * 50_000 + b"]" * 50_000, "not_json"),
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


def test_the_encoder_says_the_revision_only_when_a_newer_field_is_there() -> None:
    old_form = json.loads(encode_message(_batch()))
    assert "rev" not in old_form  # a hub of revision 5 reads it as it always did
    status = wire.UnitStatus(unit_id="u1", online=True, quarantined=2)
    assert json.loads(encode_message(status))["rev"] == 6
    assert json.loads(encode_message(_batch(rev=6)))["rev"] == 6
    with pytest.raises(ValueError, match="needs 6"):
        encode_message(status.model_copy(update={"rev": 5}))


def test_no_text_may_hold_a_nul() -> None:
    venue = {"v": 1, "schema": "doorscan.venue", "venue_id": "v1", "name": "A\u0000B"}
    with pytest.raises(Refusal) as caught:
        decode_message(json.dumps(venue).encode(), wire.VenueRecord)
    assert caught.value.code == "schema" and caught.value.reason.startswith("name")


SCHEMA_DIR = DOC.parent / "schema"


def test_the_committed_json_schemas_are_the_models() -> None:
    rendered = render_all()
    committed = {path.name: path.read_text(encoding="utf-8") for path in SCHEMA_DIR.glob("*.json")}
    assert committed == rendered, "run: python -m doorscan.wire.schema docs"


def test_the_tables_in_wire_md_are_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert render_wire_md(text) == text, "run: python -m doorscan.wire.schema docs"


def test_every_field_added_later_is_in_its_revision() -> None:
    described = dict(wire.REVISIONS)
    assert sorted(described) == list(range(1, wire.WIRE_REVISION + 1))
    models: list[type[BaseModel]] = [*wire.MESSAGES, wire.Scan, wire.RefusedScan, wire.BatchRefusal]
    for model in models:
        for name, field in model.model_fields.items():
            extra = field.json_schema_extra
            since = extra.get("since") if isinstance(extra, dict) else None
            if isinstance(since, int):
                shown = field.alias or name
                assert f".{shown}`" in described[since] or f"`{shown}`" in described[since], (
                    model.__name__,
                    name,
                )


HUB_SOURCES = ("hub/ingest.py", "hub/judge.py", "hub/batch_reader.py", "hub/answers.py")
ROOT = DOC.parents[1]


def test_every_refusal_code_the_hub_writes_is_documented() -> None:
    documented = {c.code for c in REFUSAL_CODES}
    found = set()
    for source in (*HUB_SOURCES, "doorscan/wire/codec.py", "doorscan/wire/messages.py"):
        text = (ROOT / source).read_text(encoding="utf-8")
        found |= set(re.findall(r'Refusal\(\s*"([a-z_]+)"', text))
    history = (ROOT / "hub/history.py").read_text(encoding="utf-8")
    found |= set(re.findall(r'Hold\(\s*"([a-z_]+)"', history))
    found |= {"unsealable", "poison", "replayed_batch", "internal_error"}  # raised elsewhere
    assert found <= documented, found - documented
    assert len(found) >= 25  # the search finds the codes: a broken pattern finds none


def test_a_message_written_for_an_older_reader_leaves_out_what_it_would_refuse() -> None:
    status = wire.UnitStatus(
        unit_id="u1", online=True, uptime_s=5, config_version=3, quarantined=2, rev=6
    )
    for revision, kept in ((6, 6), (5, 5), (4, 4), (3, 1)):
        older = wire.written_for(status, revision)
        assert wire.revision_of(older) == kept
        decode_message(encode_message(older), wire.UnitStatus)  # still a valid message
    assert wire.written_for(status, 5).config_version == 3
    assert wire.written_for(status, 5).quarantined is None and "rev" not in json.loads(
        encode_message(wire.written_for(status, 5))
    )
