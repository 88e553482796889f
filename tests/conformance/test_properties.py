"""Property-based: whatever a unit publishes, the hub keeps its promises.

Each example publishes a few messages, over a plain MQTT client, to a real Mosquitto and
a real `hub serve`: batches made from docs/schema/scan-batch.json (scans with the
documented QR text or junk), the same with random damage, random bytes; at QoS 0 or 1,
sometimes retained. After each example:

1. every identifiable batch is answered: on a unit's scans topic, a version-1 JSON object
   with a readable ``batch_id`` and a ``rev`` (a unit of revision 5 or older is not told
   of a refusal worth a retry, so it may go unanswered);
2. every answer validates against docs/schema/ack.json and names each scan once;
3. nothing acknowledged as stored is missing from the hub's database;
4. the database grows within a bound of what was published;
5. the hub still answers a good batch from another unit within seconds.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conformance.conftest import HubUnderTest
from tests.conformance.outsider import (
    batch,
    documented_qr_text,
    from_schema,
    recent,
    scan,
    time_text,
    valid,
)
from tests.hubdb import raw_sql

UNITS = ["door-1", "door-1", "door-1", "door-2", "door-x", "door-9"]
ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_BYTES = 1024 * 1024
ANSWER_WITHIN_S = 10.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def damaged(draw: st.DrawFn, message: dict[str, Any]) -> bytes:
    """A valid message with one kind of damage, as a buggy unit would send it."""
    how = draw(st.sampled_from(["none", "none", "drop", "add", "replace", "scan", "cut", "rev"]))
    data = json.loads(json.dumps(message))
    if how == "drop":
        data.pop(draw(st.sampled_from(sorted(data))))
    elif how == "add":
        data[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    elif how == "replace":
        data[draw(st.sampled_from(sorted(data)))] = draw(json_values)
    elif how == "scan" and isinstance(data.get("scans"), list) and data["scans"]:
        target = data["scans"][0]
        target[draw(st.sampled_from(sorted(target)))] = draw(json_values)
    elif how == "rev":
        data["rev"] = draw(st.sampled_from([7, "6", 0, None]))
    text = json.dumps(data, ensure_ascii=False).encode()
    if how == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    return text


TEXTS = st.sampled_from([documented_qr_text(), documented_qr_text(), "junk|||", "x"])
# Scans at the registered venue and at a recent time, mostly: the ones a hub stores.
SCAN_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "qr_text": TEXTS,
    "venue_id": st.sampled_from(["hospital", "hospital", "market", "nowhere"]),
    "scanned_at": st.one_of(
        st.integers(0, 600).map(lambda m: time_text(recent(minutes=m))),
        from_schema("scan-batch").map(lambda b: b["sent_at"]),
    ),
}
scan_from_schema = from_schema("scan-batch", overrides=SCAN_FIELDS).map(
    lambda b: b["scans"][0] if b.get("scans") else {}
)
schema_batches = from_schema(
    "scan-batch",
    overrides={
        "rev": st.sampled_from([6, 6, 6, None]),
        "scans": st.lists(scan_from_schema, min_size=1, max_size=4),
    },
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes, int, bool]:
    unit = draw(st.sampled_from(UNITS))
    kind = draw(st.sampled_from(["schema", "schema", "schema", "bytes", "json"]))
    if kind == "schema":
        message = draw(schema_batches)
        message["unit_id"] = draw(st.sampled_from([unit, unit, unit, "door-2"]))
        payload = draw(damaged(message))
    elif kind == "json":
        payload = json.dumps(draw(json_values)).encode()
    else:
        payload = draw(st.binary(max_size=64))
    qos = draw(st.sampled_from([1, 1, 1, 0]))
    retain = draw(st.sampled_from([False] * 9 + [True]))
    return f"doorscan/v1/units/{unit}/scans", payload, qos, retain


def _own(payload: bytes, round_no: int) -> bytes:
    """Make the valid ids of this example unique to it: scan ids are unique forever."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(data, dict):
        return payload

    def own(value: Any) -> Any:
        return (
            f"r{round_no:04d}{value}"[:64]
            if isinstance(value, str) and ID.fullmatch(value)
            else value
        )

    if "batch_id" in data:
        data["batch_id"] = own(data["batch_id"])
    for item in data.get("scans") or [] if isinstance(data.get("scans"), list) else []:
        if isinstance(item, dict) and "scan_id" in item:
            item["scan_id"] = own(item["scan_id"])
    return json.dumps(data, ensure_ascii=False).encode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def expects_answer(topic: str, payload: bytes) -> str | None:
    """The batch id the hub must answer, per docs/wire.md, or None."""
    if not re.fullmatch(r"doorscan/v1/units/[a-z0-9][a-z0-9_-]{0,62}/scans", topic):
        return None
    if len(payload) > MAX_BYTES:
        return None
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or type(data.get("v")) is not int or data["v"] != 1:
        return None
    batch_id = data.get("batch_id")
    if not isinstance(batch_id, str) or not ID.fullmatch(batch_id) or data.get("rev") is None:
        return None
    return batch_id


def _counts(db: str) -> tuple[int, int]:
    rows = raw_sql(
        db,
        "SELECT (SELECT count(*) FROM scans) + (SELECT count(*) FROM held_scans) "
        "+ (SELECT count(*) FROM dead_letters), "
        "(SELECT coalesce(sum(length(payload)), 0) FROM dead_letters)",
    )
    return int(rows[0][0]), int(rows[0][1])


def _stored_ids(db: str, ids: list[str]) -> set[str]:
    found = set()
    for scan_id in ids:
        rows = raw_sql(
            db,
            "SELECT scan_id FROM scans WHERE scan_id = ? UNION ALL "
            "SELECT scan_id FROM held_scans WHERE scan_id = ?",
            scan_id,
            scan_id,
        )
        assert len(rows) <= 1, scan_id
        found |= {str(row[0]) for row in rows}
    return found


@pytest.fixture
def fleet(hub: HubUnderTest) -> Any:
    listener = hub.outsider("listener")
    listener.subscribe("doorscan/v1/units/+/ack")
    publishers = {unit: hub.outsider(unit) for unit in sorted(set(UNITS))}
    yield hub, listener, publishers, itertools.count(1)
    listener.close()
    for client in publishers.values():
        client.close()


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sent=st.lists(messages(), min_size=1, max_size=4))
def test_whatever_a_unit_publishes_the_hub_keeps_its_promises(
    fleet: Any, sent: list[tuple[str, bytes, int, bool]]
) -> None:
    hub, listener, publishers, rounds = fleet
    round_no = next(rounds)
    rows_before, bytes_before = _counts(hub.db)
    expected: dict[str, str] = {}
    published = 0
    scans_sent = 0
    for topic, original, qos, retain in sent:
        payload = _own(original, round_no)
        unit = topic.split("/")[3]
        publishers[unit].publish(topic, payload, qos=qos, retain=retain)
        published += len(payload)
        scans_sent += payload.count(b'"scan_id"')
        if (batch_id := expects_answer(topic, payload)) is not None:
            expected[batch_id] = f"doorscan/v1/units/{unit}/ack"

    # 5: a good batch from another unit, as the last message of the example.
    control = batch(
        f"r{round_no:04d}control",
        "door-2",
        [scan(f"r{round_no:04d}ctl-scan", "hospital", recent(), documented_qr_text())],
    )
    publishers["door-2"].publish("doorscan/v1/units/door-2/scans", json.dumps(control).encode())
    expected[control["batch_id"]] = "doorscan/v1/units/door-2/ack"

    def answers() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for topic in set(expected.values()):
            for ack in listener.answers(topic):
                if ack.get("batch_id") in expected:
                    found.setdefault(ack["batch_id"], []).append(ack)
        return found

    # 1: every identifiable batch is answered.
    assert listener.wait(lambda: set(answers()) == set(expected), ANSWER_WITHIN_S), set(
        expected
    ) - set(answers())
    acks = [ack for group in answers().values() for ack in group]
    stored: list[str] = []
    for ack in acks:
        # 2: every answer is a valid Ack naming each scan once.
        assert valid("ack", ack), ack
        named = [*ack.get("stored", []), *(r["scan_id"] for r in ack.get("refused", []))]
        assert len(named) == len(set(named)), ack
        assert not (ack.get("refusal") and named), ack
        stored += ack.get("stored", [])
        for refused in ack.get("refused", []):
            event(f"scan refused: {refused.get('code')}")
        if ack.get("refusal"):
            event(f"batch refused: {ack['refusal']['code']}")
        if ack.get("stored") and ack["batch_id"] != control["batch_id"]:
            event("a generated batch had a scan stored")
    assert control["scans"][0]["scan_id"] in stored
    # 3: nothing acknowledged as stored is missing.
    assert _stored_ids(hub.db, stored) == set(stored)
    # 4: the database grows within a bound of what was published.
    rows_after, bytes_after = _counts(hub.db)
    assert rows_after - rows_before <= scans_sent + len(sent) + 2
    assert bytes_after - bytes_before <= 2 * published + 4096 * len(sent) + 4096
